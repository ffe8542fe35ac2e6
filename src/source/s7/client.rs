//! One ISO-on-TCP connection to an S7 PLC: connect (COTP with the TSAPs),
//! negotiate the PDU size (Setup Communication), and Read Var.
//!
//! One request is in flight at a time and every exchange has a deadline.
//! Every answer must carry the PDU reference of its request; after a
//! timeout or a broken answer the caller drops the connection, so a late
//! reply can never be taken for the answer to the next request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::proto::{self, FrameError, Item, ItemResult};

/// Why an exchange gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// No (complete) answer within the timeout.
    #[error("no answer within the timeout")]
    Timeout,
    /// Connect refused, reset, closed.
    #[error("link down: {0}")]
    Io(String),
    /// An answer arrived that is not a valid reply to the request.
    #[error("broken answer: {0}")]
    Frame(FrameError),
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> Self {
        LinkError::Io(e.to_string())
    }
}

/// An open, negotiated connection.
pub struct Connection {
    stream: TcpStream,
    /// The PDU size the PLC granted.
    pdu: u16,
    /// The reference of the next request; the answer must carry it.
    next_ref: u16,
}

impl Connection {
    /// Connects to `address`, sends the COTP Connection Request with the
    /// TSAPs and negotiates the PDU size, all within `limit`.
    pub async fn open(
        address: &str,
        local_tsap: u16,
        remote_tsap: u16,
        pdu: u16,
        limit: Duration,
    ) -> Result<Connection, LinkError> {
        let attempt = async {
            let stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            let mut conn = Connection {
                stream,
                pdu: 0,
                next_ref: 1,
            };
            conn.stream
                .write_all(&proto::connect_request(local_tsap, remote_tsap))
                .await?;
            let cc = conn.frame().await?;
            proto::check_connect_confirm(&cc).map_err(LinkError::Frame)?;
            let pdu_ref = conn.take_ref();
            conn.stream
                .write_all(&proto::setup_request(pdu_ref, pdu))
                .await?;
            let payload = conn.frame().await?;
            let ack = proto::parse_ack(&payload).map_err(LinkError::Frame)?;
            check_ref(ack.pdu_ref, pdu_ref)?;
            conn.pdu = proto::parse_setup(&ack).map_err(LinkError::Frame)?;
            Ok::<_, LinkError>(conn)
        };
        match timeout(limit, attempt).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout),
        }
    }

    /// The negotiated PDU size.
    pub fn pdu(&self) -> u16 {
        self.pdu
    }

    fn take_ref(&mut self) -> u16 {
        let r = self.next_ref;
        self.next_ref = self.next_ref.checked_add(1).unwrap_or(1);
        r
    }

    /// Reads one TPKT frame; returns its payload.
    async fn frame(&mut self) -> Result<Vec<u8>, LinkError> {
        let mut head = [0u8; proto::TPKT_LEN];
        self.stream.read_exact(&mut head).await?;
        let len = proto::tpkt_payload_len(head).map_err(LinkError::Frame)?;
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).await?;
        Ok(payload)
    }

    /// One Read Var request for `items` (which the caller sized to the
    /// PDU); one result per item, in order.
    pub async fn read(
        &mut self,
        items: &[Item],
        limit: Duration,
    ) -> Result<Vec<ItemResult>, LinkError> {
        let pdu_ref = self.take_ref();
        let request = proto::read_request(pdu_ref, items);
        let exchange = async {
            self.stream.write_all(&request).await?;
            let payload = self.frame().await?;
            let ack = proto::parse_ack(&payload).map_err(LinkError::Frame)?;
            check_ref(ack.pdu_ref, pdu_ref)?;
            proto::parse_read(&ack, items).map_err(LinkError::Frame)
        };
        match timeout(limit, exchange).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout),
        }
    }
}

fn check_ref(got: u16, sent: u16) -> Result<(), LinkError> {
    if got == sent {
        Ok(())
    } else {
        Err(LinkError::Frame(FrameError::Garbage(format!(
            "answer to request {got}, expected {sent}"
        ))))
    }
}
