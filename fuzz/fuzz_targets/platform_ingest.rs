//! The city's receiver: any topic and any payload from the network is
//! stored, rejected with a reason or dropped as a duplicate, never a panic.
//! The input is `topic NUL payload`; without a NUL, the payload goes to an
//! enrolled gateway's topic of the stream its first byte picks.
#![no_main]
use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use zgsz_platform::config::Config;
use zgsz_platform::ingest::handle;
use zgsz_platform::store::{Gateway, Store};

const USCC: &str = "91321003MA1XXXXX0A";

thread_local! {
    // The store is async (one code path for SQLite and PostgreSQL); on
    // SQLite nothing in it ever waits, so a current-thread runtime runs it.
    static RECEIVER: RefCell<(tokio::runtime::Runtime, Store, Config)> = RefCell::new({
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let cfg = Config::parse(
            "fuzz.toml",
            "[database]\npath = \":memory:\"\n[mqtt]\nhost = \"127.0.0.1\"\nclient_id = \"fuzz\"\n",
        )
        .expect("the fuzz config is valid");
        let store = rt.block_on(async {
            let mut store = Store::sqlite(":memory:").await.expect("an in-memory database");
            store
                .enrol(&Gateway {
                    gateway_id: "gw-1".into(),
                    uscc: USCC.into(),
                    region_code: "321003".into(),
                    public_key: "ab".repeat(32),
                })
                .await
                .expect("enrol");
            store
        });
        (rt, store, cfg)
    });
}

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|b| *b == 0) {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        None => {
            let stream = ["metrics", "states", "status"][usize::from(*data.first().unwrap_or(&0)) % 3];
            (format!("zgsz/321003/{USCC}/gw-1/{stream}"), data)
        }
    };
    RECEIVER.with(|r| {
        let (rt, store, cfg) = &mut *r.borrow_mut();
        let _ = rt.block_on(handle(store, cfg, &topic, payload));
    });
});
