//! Packing a device's tags into the fewest Read Var requests.
//!
//! Two steps, as for Modbus (`source/modbus/plan.rs`), plus the one S7
//! adds:
//!
//! 1. **Ranges.** Tags of one area are sorted by start byte and merged while
//!    the gap between them is at most `max_gap` bytes. A tag the PLC
//!    refused as part of a merged range (return code 0x05, address out of
//!    range: a merged range reached past the end of a DB) is read on its
//!    own from then on.
//! 2. **Items.** A range longer than the largest item an answer can carry
//!    is cut into pieces of that size.
//! 3. **Requests.** Items are packed into requests two ways, and the plan
//!    takes the one with fewer requests: first-fit decreasing (best when
//!    the answers' bytes are the limit), and a balanced fill that mixes the
//!    largest and the smallest items (best when the item count is). A
//!    request must fit the negotiated PDU twice: the request (12 bytes an
//!    item) and the answer (4 bytes an item plus its data, filled to an
//!    even length), and hold at most [`MAX_ITEMS`] items.

use super::proto::{self, Area, Item};

/// Items per Read Var request, whatever the PDU would allow: the limit of
/// the S7-300/400 CPUs (and of most S7 clients).
pub const MAX_ITEMS: usize = 20;

/// What the planner needs to know of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub area: Area,
    pub start: u32,
    pub len: u16,
    /// Never merged with its neighbours (the PLC refused a merged range).
    pub solo: bool,
}

impl Span {
    fn end(&self) -> u32 {
        self.start + u32::from(self.len)
    }
}

/// A contiguous byte range of one area and the tags inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub area: Area,
    pub start: u32,
    pub len: u32,
    /// Indexes into the device's tag list.
    pub tags: Vec<usize>,
    /// Indexes into [`Plan::items`], in address order.
    pub pieces: Vec<usize>,
}

/// One Read Var request: indexes into [`Plan::items`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub items: Vec<usize>,
}

/// The requests of one poll cycle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub ranges: Vec<Range>,
    pub items: Vec<Item>,
    pub requests: Vec<Request>,
}

/// The largest data one item may carry in an answer of `pdu` bytes.
pub fn max_item_len(pdu: u16) -> usize {
    (usize::from(pdu).saturating_sub(proto::ANSWER_BASE + 4)).max(2) & !1
}

/// Items one request may hold at `pdu` bytes.
pub fn max_items(pdu: u16) -> usize {
    ((usize::from(pdu).saturating_sub(proto::read_request_size(0))) / proto::REQUEST_ITEM)
        .clamp(1, MAX_ITEMS)
}

/// Builds the plan for `spans` at the negotiated `pdu`.
pub fn plan(spans: &[Span], max_gap: u16, pdu: u16) -> Plan {
    let item_max = max_item_len(pdu);
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].area, spans[i].start, spans[i].len));
    let mut ranges: Vec<Range> = Vec::new();
    for i in order {
        let s = spans[i];
        if let Some(r) = ranges.last_mut() {
            let r_end = r.start + r.len;
            let solo = s.solo || r.tags.iter().any(|&t| spans[t].solo);
            if !solo && r.area == s.area && s.start <= r_end + u32::from(max_gap) {
                r.len = r_end.max(s.end()) - r.start;
                r.tags.push(i);
                continue;
            }
        }
        ranges.push(Range {
            area: s.area,
            start: s.start,
            len: u32::from(s.len),
            tags: vec![i],
            pieces: Vec::new(),
        });
    }
    let mut items = Vec::new();
    for r in &mut ranges {
        let mut at = r.start;
        while at < r.start + r.len {
            let len = (r.start + r.len - at).min(item_max as u32);
            r.pieces.push(items.len());
            items.push(Item {
                area: r.area,
                start: at,
                len: len as u16,
            });
            at += len;
        }
    }
    let requests = pack(&items, pdu);
    Plan {
        ranges,
        items,
        requests,
    }
}

/// The better of two packings (fewer requests; first-fit decreasing on a
/// tie): first-fit decreasing wins when the answers' bytes are the limit,
/// the balanced packing when the item count per request is.
fn pack(items: &[Item], pdu: u16) -> Vec<Request> {
    let ffd = first_fit_decreasing(items, pdu);
    let balanced = balanced(items, pdu);
    if balanced.len() < ffd.len() {
        balanced
    } else {
        ffd
    }
}

fn answer_size(it: &Item) -> usize {
    proto::answer_item_size(usize::from(it.len))
}

/// First-fit decreasing: each item, largest first, goes into the first
/// request that still has room for it in both directions.
fn first_fit_decreasing(items: &[Item], pdu: u16) -> Vec<Request> {
    let per_request = max_items(pdu);
    let pdu = usize::from(pdu);
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].len));
    // Per request: its items and the size of its answer so far.
    let mut open: Vec<(Request, usize)> = Vec::new();
    for i in order {
        let size = answer_size(&items[i]);
        let slot = open.iter_mut().find(|(r, answer)| {
            r.items.len() < per_request
                && proto::read_request_size(r.items.len() + 1) <= pdu
                && answer + size <= pdu
        });
        match slot {
            Some((r, answer)) => {
                r.items.push(i);
                *answer += size;
            }
            None => open.push((Request { items: vec![i] }, proto::ANSWER_BASE + size)),
        }
    }
    open.into_iter().map(|(r, _)| r).collect()
}

/// Fills one request at a time, taking the largest item left when the
/// request's other slots can still be filled with the smallest ones, and
/// the smallest otherwise: many small items and a few large ones (strings
/// among bits and words) then share requests instead of the large ones
/// using up the bytes of a request and the small ones its item slots.
fn balanced(items: &[Item], pdu: u16) -> Vec<Request> {
    let per_request = max_items(pdu);
    let pdu = usize::from(pdu);
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].len);
    let mut left: std::collections::VecDeque<usize> = order.into();
    let mut out = Vec::new();
    while !left.is_empty() {
        let mut r = Request { items: Vec::new() };
        let mut answer = proto::ANSWER_BASE;
        while r.items.len() < per_request && proto::read_request_size(r.items.len() + 1) <= pdu {
            let (Some(&small), Some(&large)) = (left.front(), left.back()) else {
                break;
            };
            let others = (per_request - r.items.len() - 1).min(left.len() - 1);
            let reserve = others * answer_size(&items[small]);
            let take = if answer + answer_size(&items[large]) + reserve <= pdu {
                left.pop_back()
            } else if answer + answer_size(&items[small]) <= pdu {
                left.pop_front()
            } else {
                None
            };
            let Some(i) = take else { break };
            answer += answer_size(&items[i]);
            r.items.push(i);
        }
        if r.items.is_empty() {
            // Cannot happen (every item fits a request on its own); never
            // loop forever on it.
            if let Some(i) = left.pop_back() {
                r.items.push(i);
            }
        }
        out.push(r);
    }
    out
}

/// The fewest requests any plan could use for these items at `pdu`: what
/// the answers' bytes need, and what the item count needs.
pub fn lower_bound(items: &[Item], pdu: u16) -> usize {
    let bytes: usize = items
        .iter()
        .map(|it| proto::answer_item_size(usize::from(it.len)))
        .sum();
    let room = usize::from(pdu).saturating_sub(proto::ANSWER_BASE).max(1);
    bytes
        .div_ceil(room)
        .max(items.len().div_ceil(max_items(pdu)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(n: u16, start: u32, len: u16) -> Span {
        Span {
            area: Area::Db(n),
            start,
            len,
            solo: false,
        }
    }

    fn check_fits(p: &Plan, pdu: u16) {
        for r in &p.requests {
            assert!(r.items.len() <= max_items(pdu));
            assert!(proto::read_request_size(r.items.len()) <= usize::from(pdu));
            let answer: usize = proto::ANSWER_BASE
                + r.items
                    .iter()
                    .map(|&i| proto::answer_item_size(usize::from(p.items[i].len)))
                    .sum::<usize>();
            assert!(answer <= usize::from(pdu), "answer of {answer} bytes");
        }
        let mut seen: Vec<usize> = p.requests.iter().flat_map(|r| r.items.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..p.items.len()).collect::<Vec<_>>());
    }

    #[test]
    fn adjacent_tags_of_one_area_merge_and_areas_never_do() {
        let spans = [db(10, 0, 2), db(10, 2, 4), db(10, 10, 1), db(11, 0, 2)];
        let p = plan(&spans, 4, 240);
        assert_eq!(p.ranges.len(), 2);
        assert_eq!((p.ranges[0].start, p.ranges[0].len), (0, 11));
        assert_eq!(p.requests.len(), 1);
        check_fits(&p, 240);
    }

    #[test]
    fn a_long_range_is_cut_to_the_pdu() {
        let spans: Vec<Span> = (0..1000).map(|i| db(1, i * 4, 4)).collect();
        let p = plan(&spans, 0, 240);
        assert_eq!(p.ranges.len(), 1);
        assert_eq!(p.items[0].len as usize, max_item_len(240));
        check_fits(&p, 240);
        assert_eq!(p.requests.len(), lower_bound(&p.items, 240));
    }

    #[test]
    fn many_small_items_share_requests_up_to_the_item_limit() {
        let spans: Vec<Span> = (0..100).map(|i| db(i as u16 + 1, 0, 2)).collect();
        for pdu in [240u16, 480, 960] {
            let p = plan(&spans, 8, pdu);
            check_fits(&p, pdu);
            assert_eq!(p.requests.len(), lower_bound(&p.items, pdu), "pdu {pdu}");
        }
        assert_eq!(max_items(240), 19);
        assert_eq!(max_items(960), MAX_ITEMS);
    }

    #[test]
    fn a_few_large_items_among_many_small_ones_reach_the_item_bound() {
        // 200 strings and 800 small tags, each in a range of its own: the
        // item count per request is the limit (ceil(1000 / 19) = 53).
        let spans: Vec<Span> = (0..1000)
            .map(|i| db(1, i * 40, if i % 5 == 4 { 18 } else { 1 + (i % 4) as u16 }))
            .collect();
        let p = plan(&spans, 8, 240);
        check_fits(&p, 240);
        assert_eq!(p.requests.len(), 53);
        assert_eq!(lower_bound(&p.items, 240), 53);
    }

    #[test]
    fn solo_tags_are_not_merged() {
        let mut spans = [db(1, 0, 2), db(1, 2, 2)];
        spans[1].solo = true;
        assert_eq!(plan(&spans, 8, 240).ranges.len(), 2);
    }
}
