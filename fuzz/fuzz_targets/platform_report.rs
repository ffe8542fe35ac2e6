//! The city's report intake: any bytes uploaded as report.json and
//! report.json.sig are refused with at least one reason, or the database
//! says why not; never a panic, and never accepted, since nothing here can
//! sign for the enrolled gateway. The input is `signature NUL report`;
//! without a NUL, the signature is empty.
#![no_main]
use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use zgsz_platform::report::{intake, Verdict};
use zgsz_platform::store::{Gateway, Store};

thread_local! {
    // As in platform_ingest: on SQLite nothing in the store waits, so a
    // current-thread runtime runs it.
    static RECEIVER: RefCell<(tokio::runtime::Runtime, Store)> = RefCell::new({
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let store = rt.block_on(async {
            let mut store = Store::sqlite(":memory:").await.expect("an in-memory database");
            store
                .enrol(&Gateway {
                    gateway_id: "gw-1".into(),
                    uscc: "91321003MA1XXXXX0A".into(),
                    region_code: "321003".into(),
                    public_key: "ab".repeat(32),
                })
                .await
                .expect("enrol");
            store
        });
        (rt, store)
    });
}

fuzz_target!(|data: &[u8]| {
    let (signature, report) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    RECEIVER.with(|r| {
        let (rt, store) = &mut *r.borrow_mut();
        let outcome = rt
            .block_on(intake(store, report, signature))
            .expect("an in-memory SQLite database does not fail");
        assert_eq!(outcome.verdict, Verdict::Refused);
        assert!(!outcome.reasons.is_empty());
        assert!(outcome.reasons.iter().all(|r| !r.text.is_empty()));
    });
});
