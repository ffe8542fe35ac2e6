//! A receiver's persistent session, made ahead of the receiver.
//!
//! On a first start a receiver has no session on the broker, so whatever a
//! gateway publishes before the receiver has connected and subscribed is
//! not queued for it. Tests and the load tool make the session first,
//! subscribed and acknowledged (SUBACK), and only then start publishers.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Connects as `client_id` with clean session off, subscribes to `filters`
/// at QoS 1, waits for every SUBACK and disconnects, leaving the session.
pub async fn persistent_session(port: u16, client_id: &str, filters: &[String]) {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(false);
    let (client, mut events) = AsyncClient::new(o, 10);
    for f in filters {
        client
            .subscribe(f.clone(), QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
    }
    let acked = async {
        let mut subacks = 0;
        while subacks < filters.len() {
            let event = events.poll().await.expect("the broker");
            if let Event::Incoming(Packet::SubAck(_)) = event {
                subacks += 1;
            }
        }
        client.disconnect().await.expect("disconnect queued");
        while events.poll().await.is_ok() {}
    };
    tokio::time::timeout(Duration::from_secs(10), acked)
        .await
        .expect("the broker acknowledged the subscriptions within 10 s");
}
