//! Crashes the fuzz targets found, kept as tests (fuzz/regressions/README.md
//! has the story of each; `fuzz/smoke.sh` also replays the raw inputs).

use gust::limits::{PAYLOAD_LEN_DEFAULT, SYNC_CURSORS_MAX};
use gust::protocol::*;

/// body_grow #1: bincode's claim limit counted 16 bytes per 2-byte cursor, so
/// a valid sync of 8,192 cursors was refused as `bad_body`.
#[test]
fn the_largest_valid_sync_decodes() {
    for n in [8_191, 8_192, SYNC_CURSORS_MAX] {
        let body = Body::Sync(Sync {
            cursors: vec![
                SyncCursor {
                    conversation_id: 0,
                    seq: 0
                };
                n
            ],
            page_messages_max: 0,
        });
        let mut payload = bytes::BytesMut::new();
        body.encode_into(&mut payload).expect("encode");
        assert!(payload.len() <= PAYLOAD_LEN_DEFAULT as usize);
        assert_eq!(
            Body::decode(Command::Sync, &payload),
            Ok(body),
            "{n} cursors"
        );
    }
}

#[test]
fn a_sync_end_filling_a_default_frame_decodes() {
    // 2 bytes a cursor: the worst claim ratio (16 claimed per 2 on the wire).
    let n = (PAYLOAD_LEN_DEFAULT as usize - 8) / 2;
    let body = Body::SyncEnd(SyncEnd {
        cursors: vec![
            SyncCursor {
                conversation_id: 1,
                seq: 1
            };
            n
        ],
    });
    let mut payload = bytes::BytesMut::new();
    body.encode_into(&mut payload).expect("encode");
    assert!(payload.len() <= PAYLOAD_LEN_DEFAULT as usize);
    assert_eq!(Body::decode(Command::SyncEnd, &payload), Ok(body));
}
