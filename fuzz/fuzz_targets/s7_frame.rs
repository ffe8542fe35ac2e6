//! Any bytes as an S7 PLC's answer: the TPKT header, the Ack-Data header,
//! the Setup Communication and Read Var answers. An error or a result,
//! never a panic; a Read Var result always has one entry per item asked
//! for, and every data item exactly the length asked for.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zgsz_agent::source::s7::proto::{self, Area, Item, ItemResult};

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let _ = proto::tpkt_payload_len([data[0], data[1], data[2], data[3]]);
    let _ = proto::check_connect_confirm(data);
    let _ = proto::parse_job(data);
    // Items asked for, derived from the first two bytes.
    let items: Vec<Item> = (0..data[0] % 8)
        .map(|i| Item {
            area: Area::Db(u16::from(i) + 1),
            start: u32::from(i) * 4,
            len: u16::from(data[1] % 16) + u16::from(i),
        })
        .collect();
    let payload = &data[2..];
    if let Ok(ack) = proto::parse_ack(payload) {
        let _ = proto::parse_setup(&ack);
        if let Ok(results) = proto::parse_read(&ack, &items) {
            assert_eq!(results.len(), items.len());
            for (r, it) in results.iter().zip(&items) {
                if let ItemResult::Data(bytes) = r {
                    assert_eq!(bytes.len(), usize::from(it.len));
                }
            }
        }
    }
});
