//! Running work on another shard: a closure is sent through the bounded glommio channel mesh
//! to the shard that owns the data, run there, and its result sent back the same way.
//!
//! Only `Send` values cross: the closure's captures (topic names, record `Bytes`, offsets) and
//! its result. The future it builds runs on the owner and may use that shard's `Rc` state.
//! Each shard has one receiver task per peer; it never waits on a send itself (answers are
//! sent from the spawned jobs), so two shards calling each other with full channels cannot
//! deadlock.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::ConnectedReceiver;
use thiserror::Error;
use tracing::warn;

use super::Shard;

/// Messages in flight between a pair of shards.
pub const CHANNEL_CAPACITY: usize = 1024;

type Reply = Box<dyn Any + Send>;
type LocalFuture = Pin<Box<dyn Future<Output = Reply>>>;
type Job = Box<dyn FnOnce(Rc<Shard>) -> LocalFuture + Send>;

/// What travels between shards.
pub enum Message {
    Call { id: u64, job: Job },
    Reply { id: u64, value: Reply },
}

#[derive(Debug, Clone, Copy, Error)]
pub enum MeshError {
    #[error("shard {0} is not reachable (stopping?)")]
    Unreachable(usize),
}

/// One shard's end of the mesh.
pub struct Mesh {
    senders: Senders<Message>,
    /// Mesh peer id of each shard.
    peer_of: Vec<usize>,
    waiting: RefCell<HashMap<u64, LocalSender<Reply>>>,
    next_id: Cell<u64>,
}

impl Mesh {
    pub fn new(senders: Senders<Message>, peer_of: Vec<usize>) -> Self {
        Self {
            senders,
            peer_of,
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
        }
    }

    /// Runs `job` on shard `target` and returns its result.
    pub async fn call<T, F, Fut>(&self, target: usize, job: F) -> Result<T, MeshError>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (sender, receiver) = local_channel::new_bounded(1);
        self.waiting.borrow_mut().insert(id, sender);
        let job: Job = Box::new(move |shard| {
            Box::pin(async move { Box::new(job(shard).await) as Reply }) as LocalFuture
        });
        let Some(&peer) = self.peer_of.get(target) else {
            self.waiting.borrow_mut().remove(&id);
            return Err(MeshError::Unreachable(target));
        };
        if self
            .senders
            .send_to(peer, Message::Call { id, job })
            .await
            .is_err()
        {
            self.waiting.borrow_mut().remove(&id);
            return Err(MeshError::Unreachable(target));
        }
        let reply = receiver
            .recv()
            .await
            .ok_or(MeshError::Unreachable(target))?;
        reply
            .downcast::<T>()
            .map(|value| *value)
            .map_err(|_| MeshError::Unreachable(target))
    }

    fn deliver(&self, id: u64, value: Reply) {
        if let Some(sender) = self.waiting.borrow_mut().remove(&id) {
            // The caller may have given up (its request was dropped); then nobody listens.
            let _ = sender.try_send(value);
        }
    }
}

/// Serves the messages mesh peer `peer` (a peer id, not a shard index) sends to `shard` until
/// the channel closes; answers go back to the same peer.
pub async fn receive(shard: Rc<Shard>, peer: usize, receiver: ConnectedReceiver<Message>) {
    while let Some(message) = receiver.recv().await {
        match message {
            Message::Call { id, job } => {
                let owner = Rc::clone(&shard);
                let spawned = glommio::spawn_local_into(
                    async move {
                        let value = job(Rc::clone(&owner)).await;
                        if let Some(mesh) = &owner.mesh {
                            if mesh
                                .senders
                                .send_to(peer, Message::Reply { id, value })
                                .await
                                .is_err()
                            {
                                warn!(peer, "cannot answer a cross-shard call: peer gone");
                            }
                        }
                    },
                    shard.queues.requests,
                );
                match spawned {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(error) => warn!(peer, "cannot run a cross-shard call: {error}"),
                }
            }
            Message::Reply { id, value } => {
                if let Some(mesh) = &shard.mesh {
                    mesh.deliver(id, value);
                }
            }
        }
    }
}
