//! S7comm frames: building the few requests the agent sends and checking
//! every answer.
//!
//! Layers, outermost first:
//!
//! * TPKT (RFC 1006): version 3, a reserved byte, the total length (u16,
//!   header included).
//! * COTP (ISO 8073 class 0): Connection Request / Confirm carry the TSAPs
//!   and the TPDU size; a Data TPDU (`02 F0 80`) carries one S7 PDU.
//! * S7comm: a header (`32`, message type, reserved, PDU reference,
//!   parameter length, data length; an Ack-Data header adds an error class
//!   and code), the parameters, the data.
//!
//! The agent builds only three requests: the COTP Connection Request, Setup
//! Communication (`F0`) and Read Var (`04`). There is no function here to
//! write a variable or control a PLC: read-only by construction.
//!
//! Decoding never trusts a length field: every length is checked against
//! the bytes actually received, and a frame that is short, too long or not
//! what was asked for is an error ([`FrameError`]), never a panic. The fuzz
//! target `s7_frame` feeds the decoders random bytes.

/// TPKT header length.
pub const TPKT_LEN: usize = 4;
/// The COTP Data TPDU header (`02 F0 80`).
const COTP_DT: [u8; 3] = [0x02, 0xF0, 0x80];
/// S7 header of a job request (no error fields).
pub const JOB_HEADER: usize = 10;
/// S7 header of an Ack-Data answer (with error class and code).
pub const ACK_HEADER: usize = 12;
/// The largest TPKT frame accepted (the length field's range, minus what no
/// PLC sends): anything announcing more is garbage.
pub const MAX_FRAME: usize = 8192;
/// Bytes of one item in a Read Var request (`12 0A 10 ...`).
pub const REQUEST_ITEM: usize = 12;
/// Read Var parameter header: function and item count.
const READ_PARAM_HEAD: usize = 2;

/// Why a frame is not a valid answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame too short: {0}")]
    Short(&'static str),
    #[error("frame too long: {0}")]
    Long(&'static str),
    #[error("not an S7 answer: {0}")]
    Garbage(String),
    /// The PLC refused the whole request (S7 header error class and code).
    #[error("the PLC refused the request: error class 0x{class:02X}, code 0x{code:02X}")]
    Refused { class: u8, code: u8 },
}

/// The memory areas of an S7 PLC, with their S7comm area codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    /// Process image of the inputs (I, German E).
    Inputs,
    /// Process image of the outputs (Q, German A).
    Outputs,
    /// Bit memory (M, German also M; "Merker").
    Flags,
    /// A data block, by number (V memory of the S7-200 SMART is DB 1).
    Db(u16),
}

impl Area {
    /// The area code and DB number of a Read Var item.
    pub fn code(self) -> (u8, u16) {
        match self {
            Area::Inputs => (0x81, 0),
            Area::Outputs => (0x82, 0),
            Area::Flags => (0x83, 0),
            Area::Db(n) => (0x84, n),
        }
    }

    /// The area from a request item's code and DB number (the simulator).
    pub fn from_code(code: u8, db: u16) -> Option<Area> {
        Some(match code {
            0x81 => Area::Inputs,
            0x82 => Area::Outputs,
            0x83 => Area::Flags,
            0x84 => Area::Db(db),
            _ => return None,
        })
    }

    pub fn describe(self) -> String {
        match self {
            Area::Inputs => "I".into(),
            Area::Outputs => "Q".into(),
            Area::Flags => "M".into(),
            Area::Db(n) => format!("DB{n}"),
        }
    }
}

/// One byte range to read: `len` bytes of `area` from byte `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub area: Area,
    pub start: u32,
    pub len: u16,
}

/// One item of a Read Var answer: the bytes, or the PLC's return code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    Data(Vec<u8>),
    /// A return code other than 0xFF (success).
    Code(u8),
}

/// Wraps a payload in TPKT; with `data_tpdu`, an S7 PDU in a COTP Data
/// TPDU first.
fn tpkt(payload: &[u8], data_tpdu: bool) -> Vec<u8> {
    let extra = if data_tpdu { COTP_DT.len() } else { 0 };
    let total = TPKT_LEN + extra + payload.len();
    let mut f = Vec::with_capacity(total);
    f.extend_from_slice(&[3, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    if data_tpdu {
        f.extend_from_slice(&COTP_DT);
    }
    f.extend_from_slice(payload);
    f
}

/// The COTP Connection Request with the two TSAPs and a 1024-byte TPDU.
pub fn connect_request(local_tsap: u16, remote_tsap: u16) -> Vec<u8> {
    let mut cr = vec![
        0,    // length indicator, set below
        0xE0, // CR
        0x00, 0x00, // destination reference
        0x00, 0x01, // source reference
        0x00, // class 0
        0xC0, 0x01, 0x0A, // TPDU size 1024
        0xC1, 0x02,
    ];
    cr.extend_from_slice(&local_tsap.to_be_bytes());
    cr.extend_from_slice(&[0xC2, 0x02]);
    cr.extend_from_slice(&remote_tsap.to_be_bytes());
    cr[0] = (cr.len() - 1) as u8;
    tpkt(&cr, false)
}

/// Checks a COTP Connection Confirm (the TPKT payload).
pub fn check_connect_confirm(payload: &[u8]) -> Result<(), FrameError> {
    match payload {
        [li, 0xD0, ..] if usize::from(*li) < payload.len() => Ok(()),
        [_, 0xD0, ..] => Err(FrameError::Short("COTP connection confirm")),
        [_, 0x80, ..] => Err(FrameError::Garbage(
            "the PLC refused the connection (COTP disconnect request): check rack and slot, or the TSAPs".into(),
        )),
        [_, kind, ..] => Err(FrameError::Garbage(format!(
            "expected a COTP connection confirm, got TPDU type 0x{kind:02X}"
        ))),
        _ => Err(FrameError::Short("COTP connection confirm")),
    }
}

/// An S7 job header followed by parameters and data.
fn job(pdu_ref: u16, param: &[u8], data: &[u8]) -> Vec<u8> {
    let mut s7 = Vec::with_capacity(JOB_HEADER + param.len() + data.len());
    s7.extend_from_slice(&[0x32, 0x01, 0x00, 0x00]);
    s7.extend_from_slice(&pdu_ref.to_be_bytes());
    s7.extend_from_slice(&(param.len() as u16).to_be_bytes());
    s7.extend_from_slice(&(data.len() as u16).to_be_bytes());
    s7.extend_from_slice(param);
    s7.extend_from_slice(data);
    tpkt(&s7, true)
}

/// Setup Communication: one job at a time each way, PDU size `pdu`.
pub fn setup_request(pdu_ref: u16, pdu: u16) -> Vec<u8> {
    let mut param = vec![0xF0, 0x00, 0x00, 0x01, 0x00, 0x01];
    param.extend_from_slice(&pdu.to_be_bytes());
    job(pdu_ref, &param, &[])
}

/// Read Var for `items`, every item as a byte range (transport size BYTE).
pub fn read_request(pdu_ref: u16, items: &[Item]) -> Vec<u8> {
    let mut param = Vec::with_capacity(READ_PARAM_HEAD + REQUEST_ITEM * items.len());
    param.extend_from_slice(&[0x04, items.len() as u8]);
    for it in items {
        let (code, db) = it.area.code();
        param.extend_from_slice(&[0x12, 0x0A, 0x10, 0x02]);
        param.extend_from_slice(&it.len.to_be_bytes());
        param.extend_from_slice(&db.to_be_bytes());
        param.push(code);
        let bit_address = it.start.saturating_mul(8);
        param.extend_from_slice(&bit_address.to_be_bytes()[1..]);
    }
    job(pdu_ref, &param, &[])
}

/// The request size of a Read Var with `items` items (S7 PDU only).
pub fn read_request_size(items: usize) -> usize {
    JOB_HEADER + READ_PARAM_HEAD + REQUEST_ITEM * items
}

/// What an item of `len` bytes adds to a Read Var answer: return code,
/// transport size, length, data, and a fill byte to an even length.
pub fn answer_item_size(len: usize) -> usize {
    4 + len + (len & 1)
}

/// The fixed part of a Read Var answer (S7 PDU only).
pub const ANSWER_BASE: usize = ACK_HEADER + READ_PARAM_HEAD;

/// Checks the TPKT header of `head`; returns the payload length to read.
pub fn tpkt_payload_len(head: [u8; TPKT_LEN]) -> Result<usize, FrameError> {
    if head[0] != 3 {
        return Err(FrameError::Garbage(format!(
            "TPKT version {} (expected 3)",
            head[0]
        )));
    }
    let total = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if total < TPKT_LEN + 2 {
        return Err(FrameError::Short("TPKT length"));
    }
    if total > MAX_FRAME {
        return Err(FrameError::Long("TPKT length"));
    }
    Ok(total - TPKT_LEN)
}

/// An S7 answer taken apart: PDU reference, parameters and data.
#[derive(Debug)]
pub struct Ack<'a> {
    pub pdu_ref: u16,
    pub param: &'a [u8],
    pub data: &'a [u8],
}

/// Takes a TPKT payload (COTP DT + S7 Ack-Data) apart.
pub fn parse_ack(payload: &[u8]) -> Result<Ack<'_>, FrameError> {
    let Some(s7) = payload.strip_prefix(&COTP_DT) else {
        return Err(FrameError::Garbage("not a COTP data TPDU".into()));
    };
    if s7.len() < ACK_HEADER {
        return Err(FrameError::Short("S7 header"));
    }
    if s7[0] != 0x32 {
        return Err(FrameError::Garbage(format!(
            "protocol id 0x{:02X} (expected 0x32)",
            s7[0]
        )));
    }
    if s7[1] != 0x03 && s7[1] != 0x02 {
        return Err(FrameError::Garbage(format!(
            "message type 0x{:02X} (expected Ack-Data)",
            s7[1]
        )));
    }
    let pdu_ref = u16::from_be_bytes([s7[4], s7[5]]);
    let plen = usize::from(u16::from_be_bytes([s7[6], s7[7]]));
    let dlen = usize::from(u16::from_be_bytes([s7[8], s7[9]]));
    let (class, code) = (s7[10], s7[11]);
    if class != 0 || code != 0 {
        return Err(FrameError::Refused { class, code });
    }
    let body = &s7[ACK_HEADER..];
    match body.len().cmp(&(plen + dlen)) {
        std::cmp::Ordering::Less => return Err(FrameError::Short("S7 parameters and data")),
        std::cmp::Ordering::Greater => return Err(FrameError::Long("S7 parameters and data")),
        std::cmp::Ordering::Equal => {}
    }
    Ok(Ack {
        pdu_ref,
        param: &body[..plen],
        data: &body[plen..],
    })
}

/// The PDU size the PLC granted in its Setup Communication answer.
pub fn parse_setup(ack: &Ack<'_>) -> Result<u16, FrameError> {
    match ack.param {
        [0xF0, _, _, _, _, _, hi, lo] => {
            let pdu = u16::from_be_bytes([*hi, *lo]);
            if pdu < 64 {
                return Err(FrameError::Garbage(format!(
                    "negotiated PDU size {pdu} is too small to be real"
                )));
            }
            Ok(pdu)
        }
        [0xF0, ..] => Err(FrameError::Short("setup communication parameters")),
        [f, ..] => Err(FrameError::Garbage(format!(
            "function 0x{f:02X} in answer to setup communication"
        ))),
        [] => Err(FrameError::Short("setup communication parameters")),
    }
}

/// Splits a Read Var answer into one result per requested item, checking
/// each data length against the request: a length other than asked for is
/// an error for the whole answer.
pub fn parse_read(ack: &Ack<'_>, items: &[Item]) -> Result<Vec<ItemResult>, FrameError> {
    match ack.param {
        [0x04, n] if usize::from(*n) == items.len() => {}
        [0x04, n] => {
            return Err(FrameError::Garbage(format!(
                "{n} items in the answer, {} asked for",
                items.len()
            )))
        }
        [f, _] => {
            return Err(FrameError::Garbage(format!(
                "function 0x{f:02X} in answer to read var"
            )))
        }
        _ => return Err(FrameError::Garbage("read var parameters".into())),
    }
    let mut out = Vec::with_capacity(items.len());
    let mut rest = ack.data;
    for (i, it) in items.iter().enumerate() {
        let [rc, ts, hi, lo, tail @ ..] = rest else {
            return Err(FrameError::Short("read var item header"));
        };
        let raw = usize::from(u16::from_be_bytes([*hi, *lo]));
        if *rc != 0xFF {
            out.push(ItemResult::Code(*rc));
            // An error item carries no data (length 0) but some PLCs still
            // fill to an even offset.
            let skip = raw.min(tail.len());
            rest = &tail[skip..];
            continue;
        }
        let len = match ts {
            // BIT, BYTE/WORD/DWORD, INTEGER: the length is in bits.
            0x03..=0x05 => raw.div_ceil(8),
            // REAL, OCTET STRING: in bytes.
            0x07 | 0x09 => raw,
            other => {
                return Err(FrameError::Garbage(format!(
                    "transport size 0x{other:02X} in a read var answer"
                )))
            }
        };
        if len != usize::from(it.len) {
            return Err(FrameError::Garbage(format!(
                "item {} holds {len} bytes, {} asked for",
                i + 1,
                it.len
            )));
        }
        if tail.len() < len {
            return Err(FrameError::Short("read var item data"));
        }
        out.push(ItemResult::Data(tail[..len].to_vec()));
        let last = i + 1 == items.len();
        let fill = if !last && len % 2 == 1 { 1 } else { 0 };
        rest = tail.get(len + fill..).unwrap_or(&[]);
    }
    if !rest.is_empty() {
        return Err(FrameError::Long("read var data"));
    }
    Ok(out)
}

/// A decoded Read Var request (the simulator's side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Setup {
        pdu: u16,
    },
    Read {
        items: Vec<Item>,
    },
    /// Any other function, by its code (a write is 0x05).
    Other {
        function: u8,
    },
}

/// Takes a job request's TPKT payload apart (the simulator's side).
pub fn parse_job(payload: &[u8]) -> Result<(u16, Job), FrameError> {
    let Some(s7) = payload.strip_prefix(&COTP_DT) else {
        return Err(FrameError::Garbage("not a COTP data TPDU".into()));
    };
    if s7.len() < JOB_HEADER + 1 || s7[0] != 0x32 || s7[1] != 0x01 {
        return Err(FrameError::Garbage("not an S7 job".into()));
    }
    let pdu_ref = u16::from_be_bytes([s7[4], s7[5]]);
    let plen = usize::from(u16::from_be_bytes([s7[6], s7[7]]));
    let param = s7
        .get(JOB_HEADER..JOB_HEADER + plen)
        .ok_or(FrameError::Short("job parameters"))?;
    let job = match param {
        [0xF0, _, _, _, _, _, hi, lo] => Job::Setup {
            pdu: u16::from_be_bytes([*hi, *lo]),
        },
        [0x04, n, rest @ ..] => {
            let n = usize::from(*n);
            if rest.len() != n * REQUEST_ITEM {
                return Err(FrameError::Garbage("read var item count".into()));
            }
            let items = rest
                .chunks_exact(REQUEST_ITEM)
                .map(|c| {
                    let area = Area::from_code(c[8], u16::from_be_bytes([c[6], c[7]]))
                        .ok_or_else(|| FrameError::Garbage(format!("area 0x{:02X}", c[8])))?;
                    let bits = u32::from_be_bytes([0, c[9], c[10], c[11]]);
                    let count = u16::from_be_bytes([c[4], c[5]]);
                    // A BIT item reads one bit; every other size is bytes.
                    let len = if c[3] == 0x01 { 1 } else { count };
                    Ok(Item {
                        area,
                        start: bits / 8,
                        len,
                    })
                })
                .collect::<Result<Vec<_>, FrameError>>()?;
            Job::Read { items }
        }
        [function, ..] => Job::Other {
            function: *function,
        },
        [] => return Err(FrameError::Short("job parameters")),
    };
    Ok((pdu_ref, job))
}

/// An Ack-Data frame (the simulator's side); `error` is the header's error
/// class and code.
pub fn ack(pdu_ref: u16, error: (u8, u8), param: &[u8], data: &[u8]) -> Vec<u8> {
    let mut s7 = Vec::with_capacity(ACK_HEADER + param.len() + data.len());
    s7.extend_from_slice(&[0x32, 0x03, 0x00, 0x00]);
    s7.extend_from_slice(&pdu_ref.to_be_bytes());
    s7.extend_from_slice(&(param.len() as u16).to_be_bytes());
    s7.extend_from_slice(&(data.len() as u16).to_be_bytes());
    s7.extend_from_slice(&[error.0, error.1]);
    s7.extend_from_slice(param);
    s7.extend_from_slice(data);
    tpkt(&s7, true)
}

/// The data part of a Read Var answer (the simulator's side).
pub fn read_answer_data(results: &[ItemResult]) -> Vec<u8> {
    let mut data = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            ItemResult::Data(bytes) => {
                data.extend_from_slice(&[0xFF, 0x04]);
                data.extend_from_slice(&((bytes.len() * 8) as u16).to_be_bytes());
                data.extend_from_slice(bytes);
                if i + 1 < results.len() && bytes.len() % 2 == 1 {
                    data.push(0);
                }
            }
            ItemResult::Code(rc) => data.extend_from_slice(&[*rc, 0x00, 0x00, 0x00]),
        }
    }
    data
}

/// The COTP Connection Confirm (the simulator's side).
pub fn connect_confirm(local_tsap: u16, remote_tsap: u16) -> Vec<u8> {
    let mut cc = vec![
        0, 0xD0, 0x00, 0x01, 0x00, 0x01, 0x00, 0xC0, 0x01, 0x0A, 0xC1, 0x02,
    ];
    cc.extend_from_slice(&local_tsap.to_be_bytes());
    cc.extend_from_slice(&[0xC2, 0x02]);
    cc.extend_from_slice(&remote_tsap.to_be_bytes());
    cc[0] = (cc.len() - 1) as u8;
    tpkt(&cc, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &[u8] {
        let len = tpkt_payload_len([frame[0], frame[1], frame[2], frame[3]]).unwrap();
        assert_eq!(len + TPKT_LEN, frame.len());
        &frame[TPKT_LEN..]
    }

    #[test]
    fn read_request_round_trips_and_is_sized_as_planned() {
        let items = [
            Item {
                area: Area::Db(10),
                start: 2,
                len: 7,
            },
            Item {
                area: Area::Flags,
                start: 100,
                len: 1,
            },
        ];
        let f = read_request(9, &items);
        assert_eq!(f.len(), TPKT_LEN + 3 + read_request_size(2));
        let (pdu_ref, job) = parse_job(payload(&f)).unwrap();
        assert_eq!(pdu_ref, 9);
        assert_eq!(
            job,
            Job::Read {
                items: items.to_vec()
            }
        );
    }

    #[test]
    fn answers_split_per_item_with_fill_bytes_and_codes() {
        let items = [
            Item {
                area: Area::Db(1),
                start: 0,
                len: 3,
            },
            Item {
                area: Area::Db(2),
                start: 0,
                len: 2,
            },
            Item {
                area: Area::Inputs,
                start: 0,
                len: 1,
            },
        ];
        let results = vec![
            ItemResult::Data(vec![1, 2, 3]),
            ItemResult::Code(0x0A),
            ItemResult::Data(vec![9]),
        ];
        let data = read_answer_data(&results);
        assert_eq!(
            data.len(),
            answer_item_size(3) + 4 + answer_item_size(1) - 1
        );
        let f = ack(5, (0, 0), &[0x04, 3], &data);
        let a = parse_ack(payload(&f)).unwrap();
        assert_eq!(a.pdu_ref, 5);
        assert_eq!(parse_read(&a, &items).unwrap(), results);
    }

    #[test]
    fn a_length_other_than_asked_for_is_an_error() {
        let items = [Item {
            area: Area::Db(1),
            start: 0,
            len: 2,
        }];
        for bytes in [vec![1u8], vec![1, 2, 3, 4]] {
            let f = ack(
                1,
                (0, 0),
                &[0x04, 1],
                &read_answer_data(&[ItemResult::Data(bytes)]),
            );
            let a = parse_ack(payload(&f)).unwrap();
            assert!(parse_read(&a, &items).is_err());
        }
    }

    #[test]
    fn header_lengths_are_checked_against_the_bytes() {
        let mut f = ack(1, (0, 0), &[0x04, 1], &[0xFF, 0x04, 0x00, 0x08, 7]);
        f.push(0);
        assert!(matches!(
            parse_ack(&f[TPKT_LEN..]),
            Err(FrameError::Long(_))
        ));
        f.truncate(f.len() - 3);
        assert!(matches!(
            parse_ack(&f[TPKT_LEN..]),
            Err(FrameError::Short(_))
        ));
        let refused = ack(1, (0x81, 0x04), &[], &[]);
        assert_eq!(
            parse_ack(&refused[TPKT_LEN..]).unwrap_err(),
            FrameError::Refused {
                class: 0x81,
                code: 0x04
            }
        );
    }

    #[test]
    fn tpkt_lengths_out_of_range_are_refused() {
        assert!(tpkt_payload_len([3, 0, 0, 2]).is_err());
        assert!(tpkt_payload_len([3, 0, 0xFF, 0xFF]).is_err());
        assert!(tpkt_payload_len([4, 0, 0, 20]).is_err());
        assert_eq!(tpkt_payload_len([3, 0, 0, 22]), Ok(18));
    }

    #[test]
    fn connect_request_carries_the_tsaps() {
        let f = connect_request(0x0100, 0x0102);
        assert_eq!(&f[f.len() - 8..], &[0xC1, 2, 1, 0, 0xC2, 2, 1, 2]);
        assert!(check_connect_confirm(payload(&connect_confirm(0x0100, 0x0102))).is_ok());
        assert!(check_connect_confirm(&[6, 0x80, 0, 0, 0, 0, 0]).is_err());
    }
}
