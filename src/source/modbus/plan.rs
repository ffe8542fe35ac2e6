//! Coalescing: the fewest read requests that cover a device's tags.
//!
//! Tags of one area are sorted by address and merged into blocks while the
//! gap between them is at most `max_gap` and the block stays within the
//! protocol limit (125 registers, 2000 bits). Reading a few unused registers
//! is far cheaper than another round trip, especially on a serial line.

use serde::Deserialize;

/// The four Modbus data areas. Addresses are 0-based protocol addresses
/// (holding register "40001" in PLC manuals is `holding_register` 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    Coil,
    DiscreteInput,
    InputRegister,
    HoldingRegister,
}

impl Area {
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::DiscreteInput)
    }

    /// The largest read the standard allows in one request.
    pub fn max_per_request(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Area::Coil => "coil",
            Area::DiscreteInput => "discrete_input",
            Area::InputRegister => "input_register",
            Area::HoldingRegister => "holding_register",
        }
    }
}

/// What the planner needs to know of a tag.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub area: Area,
    pub address: u16,
    /// Registers or bits the tag covers (at least 1).
    pub len: u16,
}

impl Span {
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.len)
    }
}

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub area: Area,
    pub start: u16,
    pub count: u16,
    /// Indexes into the device's tag list.
    pub tags: Vec<usize>,
}

/// Builds the request plan. With `coalesce = false` every tag is its own
/// request, which is what a naive gateway does (useful for comparison and
/// for devices that reject any read touching an unmapped address).
pub fn plan(spans: &[Span], max_gap: u16, coalesce: bool) -> Vec<Block> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].area, spans[i].address, spans[i].len));
    let mut blocks: Vec<Block> = Vec::new();
    for i in order {
        let s = spans[i];
        if coalesce {
            if let Some(b) = blocks.last_mut() {
                let b_end = u32::from(b.start) + u32::from(b.count);
                let new_end = b_end.max(s.end());
                let fits = b.area == s.area
                    && u32::from(s.address) <= b_end + u32::from(max_gap)
                    && new_end - u32::from(b.start) <= u32::from(s.area.max_per_request());
                if fits {
                    b.count = (new_end - u32::from(b.start)) as u16;
                    b.tags.push(i);
                    continue;
                }
            }
        }
        blocks.push(Block {
            area: s.area,
            start: s.address,
            count: s.len,
            tags: vec![i],
        });
    }
    blocks
}

/// Splits a block the device refused into one request per tag; used after
/// an IllegalDataAddress/IllegalDataValue on a merged read.
pub fn split(block: &Block, spans: &[Span]) -> Vec<Block> {
    block
        .tags
        .iter()
        .map(|&i| Block {
            area: spans[i].area,
            start: spans[i].address,
            count: spans[i].len,
            tags: vec![i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hr(address: u16, len: u16) -> Span {
        Span {
            area: Area::HoldingRegister,
            address,
            len,
        }
    }

    #[test]
    fn adjacent_and_small_gaps_merge() {
        let spans = [hr(0, 2), hr(2, 1), hr(10, 2), hr(40, 1)];
        let p = plan(&spans, 8, true);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].start, p[0].count, p[0].tags.clone()),
            (0, 12, vec![0, 1, 2])
        );
        assert_eq!((p[1].start, p[1].count), (40, 1));
    }

    #[test]
    fn limit_of_125_registers_is_respected() {
        let spans: Vec<Span> = (0..300).map(|i| hr(i, 1)).collect();
        let p = plan(&spans, 0, true);
        assert_eq!(
            p.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![125, 125, 50]
        );
    }

    #[test]
    fn areas_never_merge_and_bits_allow_2000() {
        let mut spans: Vec<Span> = (0..2500)
            .map(|i| Span {
                area: Area::Coil,
                address: i,
                len: 1,
            })
            .collect();
        spans.push(hr(0, 1));
        let p = plan(&spans, 0, true);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].count, 2000);
    }

    #[test]
    fn no_coalescing_is_one_request_per_tag() {
        let spans = [hr(0, 2), hr(2, 1)];
        assert_eq!(plan(&spans, 8, false).len(), 2);
    }

    #[test]
    fn overlapping_tags_share_a_block() {
        let spans = [hr(0, 4), hr(1, 2), hr(3, 1)];
        let p = plan(&spans, 0, true);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].count, 4);
    }

    #[test]
    fn top_of_address_space() {
        let spans = [hr(65534, 2)];
        let p = plan(&spans, 8, true);
        assert_eq!((p[0].start, p[0].count), (65534, 2));
    }
}
