//! Fuzzes the segment recovery scan: on any bytes it must not panic, must report batches at
//! contiguous positions with contiguous offsets, and must end exactly where they end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlog_engine::scan::{scan_slice, step, Step};

fuzz_target!(|data: &[u8]| {
    let report = scan_slice(data, 0, Some(0), 1 << 24);
    let mut position = 0u64;
    let mut offset = 0i64;
    for found in &report.batches {
        assert_eq!(found.position, position);
        assert_eq!(found.header.base_offset, offset);
        position += found.header.total_bytes() as u64;
        offset = found.header.next_offset();
    }
    assert_eq!(report.valid_end, position);
    // The incremental form (used on chunked reads) agrees with the whole-slice form.
    if let Some(first) = report.batches.first() {
        let total = first.header.total_bytes();
        assert!(matches!(step(&data[..total - 1], false, Some(0), 1 << 24), Step::NeedMore(_)));
    }
});
