//! InitProducerId: producer ids for idempotent producers, unique across restarts.
//!
//! Shard 0, the controller, hands out every id (any shard receiving the request asks it through
//! the mesh). Ids are reserved in blocks of [`BLOCK_IDS`]: before the first id of a block is
//! given out, the end of the block is written durably to `DATA_DIR/producer-ids.json`
//! ([`super::durable`], as the topic catalog is), and a restart
//! starts at the last reserved end. A crash therefore skips the rest of a block but never
//! hands out an id twice.
//!
//! As in Kafka, a producer without a transactional id always gets a new producer id with epoch
//! 0, even when it names its current id and epoch (v3+): Kafka's coordinator "blindly accepts"
//! such a request, and an idempotent producer bumps its epoch itself (KIP-360), so nothing is
//! gained by tracking epochs here. Transactions are not implemented: a request with a
//! transactional id gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED, the answer of a Kafka broker
//! that does not let this client use transactional ids. Clients treat it as fatal with a clear
//! message, where the coordinator errors (COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR) would
//! make them retry forever. An empty transactional id is INVALID_REQUEST, as in Kafka.

use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use tracing::error;

use super::mesh::{Call, Route};
use super::{Shard, CONTROLLER};

/// File name of the reservation in the data directory.
pub const PRODUCER_IDS_FILE: &str = "producer-ids.json";
/// Ids reserved per write of the file.
pub const BLOCK_IDS: i64 = 1000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Reservation {
    /// Every id below this may have been handed out.
    reserved_end: i64,
}

/// The controller's allocator. `None` in [`Shard::producer_ids`] until the first request, when
/// the reservation file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdAllocator {
    next: i64,
    reserved_end: i64,
}

impl ProducerIdAllocator {
    /// Starts after everything a previous run may have handed out.
    pub fn load(data_dir: &Path) -> io::Result<Self> {
        let path = data_dir.join(PRODUCER_IDS_FILE);
        let mut text = String::new();
        let reserved_end = match std::fs::File::open(&path) {
            Ok(mut file) => {
                file.read_to_string(&mut text)?;
                let reservation: Reservation =
                    serde_json::from_str(&text).map_err(io::Error::other)?;
                reservation.reserved_end
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
            Err(error) => return Err(error),
        };
        if reserved_end < 0 {
            return Err(io::Error::other(format!(
                "{}: negative reserved_end {reserved_end}",
                path.display()
            )));
        }
        Ok(Self {
            next: reserved_end,
            reserved_end,
        })
    }

    /// The next id, reserving (durably) a new block first when this one is used up.
    pub fn allocate(&mut self, data_dir: &Path) -> io::Result<i64> {
        assert!(self.next <= self.reserved_end);
        if self.next == self.reserved_end {
            let reserved_end = self
                .reserved_end
                .checked_add(BLOCK_IDS)
                .ok_or_else(|| io::Error::other("producer ids exhausted"))?;
            save(data_dir, Reservation { reserved_end })?;
            self.reserved_end = reserved_end;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }
}

fn save(data_dir: &Path, reservation: Reservation) -> io::Result<()> {
    let text = serde_json::to_vec(&reservation).map_err(io::Error::other)?;
    super::durable::replace_file(data_dir, PRODUCER_IDS_FILE, &text)
}

/// Runs on the controller: the next producer id.
fn allocate_on_controller(controller: &Shard) -> io::Result<i64> {
    assert_eq!(controller.id, 0, "producer ids come from the controller");
    let data_dir = &controller.settings.data_dir;
    let mut slot = controller.producer_ids.borrow_mut();
    if slot.is_none() {
        *slot = Some(ProducerIdAllocator::load(data_dir)?);
    }
    slot.as_mut().expect("loaded above").allocate(data_dir)
}

/// Reserves a producer id on the controller (the only shard that allocates them).
pub struct Allocate;

impl Call for Allocate {
    /// The id, or why none could be reserved.
    type Reply = Result<i64, String>;

    async fn run(self, controller: Rc<Shard>) -> Self::Reply {
        allocate_on_controller(&controller).map_err(|error| error.to_string())
    }
}

pub async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let refused = |error: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(error.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    match request.transactional_id.as_ref() {
        None => {}
        Some(id) if id.0.is_empty() => return refused(ResponseError::InvalidRequest),
        Some(_) => return refused(ResponseError::TransactionalIdAuthorizationFailed),
    }
    let allocated = shard.call(CONTROLLER, Allocate).await;
    match allocated {
        Ok(Ok(id)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Ok(Err(reason)) => {
            error!("cannot reserve producer ids: {reason}");
            refused(ResponseError::UnknownServerError)
        }
        // The controller is stopping: the client retries.
        Err(error) => refused(error.code(Route::Coordinator)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut allocator = ProducerIdAllocator::load(dir.path()).expect("load");
        let first: Vec<i64> = (0..3)
            .map(|_| allocator.allocate(dir.path()).expect("id"))
            .collect();
        assert_eq!(first, vec![0, 1, 2]);
        // A restart (or a crash) skips the rest of the block.
        let mut restarted = ProducerIdAllocator::load(dir.path()).expect("load");
        assert_eq!(restarted.allocate(dir.path()).expect("id"), BLOCK_IDS);
        for expected in BLOCK_IDS + 1..2 * BLOCK_IDS + 2 {
            assert_eq!(restarted.allocate(dir.path()).expect("id"), expected);
        }
        let mut again = ProducerIdAllocator::load(dir.path()).expect("load");
        assert_eq!(again.allocate(dir.path()).expect("id"), 3 * BLOCK_IDS);
    }
}
