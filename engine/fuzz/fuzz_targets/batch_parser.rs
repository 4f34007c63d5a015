//! Fuzzes the record batch parser: header decoding, validation and the record walker must
//! never panic, and whatever validates must re-validate after stamping a new base offset.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlog_engine::batch::{self, StampedHeader, HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let _ = batch::BatchHeader::decode_checked(data, 1 << 20);
    let _ = batch::uncompressed_records(data);
    if let Ok(header) = batch::validate(data, 1 << 20) {
        for log_append_time in [None, Some(1_700_000_000_000)] {
            let stamped = StampedHeader::stamp(data, 12_345, log_append_time);
            let mut out = data.to_vec();
            out[..HEADER_BYTES].copy_from_slice(&stamped.bytes);
            let again = batch::validate(&out, 1 << 20).expect("stamping keeps a batch valid");
            assert_eq!(again.base_offset, 12_345);
            assert_eq!(again.records_count, header.records_count);
        }
    }
});
