//! Request planning: group a connector's tags into the fewest read requests
//! the device's limits allow. PLC bandwidth is the scarce resource on a
//! plant network, so this is done once at start, not per scan.

use super::point::{Point, Table};
use std::collections::BTreeSet;

/// Limits that shape the plan, from the connection string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most registers in one FC 3/4 request (protocol maximum 125).
    pub max_registers: u16,
    /// Most bits in one FC 1/2 request (protocol maximum 2000).
    pub max_bits: u16,
    /// Unused registers (or bits) a request may span to join two tags.
    pub max_gap: u16,
}

/// One read request of a scan and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Table read.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Registers or bits read.
    pub count: u16,
    /// Indexes (into the connector's tag list) of the tags inside.
    pub tags: Vec<usize>,
}

impl Block {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// Plans the blocks for `points`: sorted by table and address, contiguous
/// or overlapping tags always share a block while the limit allows, gaps
/// up to `max_gap` are bridged. A tag wider than the limit gets a block of
/// its own (config validation refuses it before that matters).
pub fn plan(points: &[&Point], limits: Limits) -> Vec<Block> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].address.table, points[i].address.offset));
    let mut blocks: Vec<Block> = Vec::new();
    for i in order {
        let p = points[i];
        let (table, start, span) = (p.address.table, p.address.offset, p.span());
        let end = u32::from(start) + u32::from(span);
        let max = u32::from(if table.is_bits() {
            limits.max_bits
        } else {
            limits.max_registers
        });
        if let Some(b) = blocks.last_mut() {
            let joins = b.table == table
                && u32::from(start) <= b.end() + u32::from(limits.max_gap)
                && end.max(b.end()) - u32::from(b.start) <= max;
            if joins {
                b.count = (end.max(b.end()) - u32::from(b.start)) as u16;
                b.tags.push(i);
                continue;
            }
        }
        blocks.push(Block {
            table,
            start,
            count: span,
            tags: vec![i],
        });
    }
    blocks
}

/// What scans taught about the device's address map: which tags must not
/// be joined across gaps, and which must be read alone. A block the
/// device refuses (an exception) although each of its tags reads fine
/// alone holds an address the device does not serve, in a bridged gap or
/// at a boundary between memory areas: its tags are planned without
/// bridging from then on, and if a gap-free block of them still fails,
/// one by one. Both stay for the life of the configuration: a plan that
/// forgot would fail the same block again every scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    /// Tags planned without bridging gaps.
    pub unbridged: BTreeSet<usize>,
    /// Tags read alone for good.
    pub alone: BTreeSet<usize>,
    /// Tags that fail alone (an illegal address of their own): read alone
    /// until they read cleanly, then planned as before.
    pub failing: BTreeSet<usize>,
}

impl Learned {
    /// The plan for `points` with what was learned: tags read alone get
    /// blocks of their own, unbridged ones are planned with `max_gap` 0,
    /// the others as configured.
    pub fn plan(&self, points: &[&Point], limits: Limits) -> Vec<Block> {
        let alone = |i: usize| self.alone.contains(&i) || self.failing.contains(&i);
        let unbridged = |i: usize| self.unbridged.contains(&i);
        let mut blocks = plan_some(points, limits, |i| !alone(i) && !unbridged(i));
        let no_gaps = Limits {
            max_gap: 0,
            ..limits
        };
        blocks.extend(plan_some(points, no_gaps, |i| !alone(i) && unbridged(i)));
        blocks.extend((0..points.len()).filter(|&i| alone(i)).map(|i| {
            let p = points[i];
            Block {
                table: p.address.table,
                start: p.address.offset,
                count: p.span(),
                tags: vec![i],
            }
        }));
        blocks
    }

    /// Learns from block `b` refused by the device, given which of its
    /// tags then failed alone. Those explain the refusal: they are read
    /// alone until they read cleanly. When none did, the block's gaps or
    /// boundaries did: its tags are unbridged, or read alone when they
    /// already were. Returns what changed, for the one log line.
    pub fn refused(&mut self, b: &Block, failed_alone: &[usize]) -> Option<&'static str> {
        if !failed_alone.is_empty() {
            self.failing.extend(failed_alone.iter().copied());
            return Some("with the refused tags alone");
        }
        if b.tags.len() < 2 {
            return None;
        }
        if b.tags.iter().all(|t| self.unbridged.contains(t)) {
            self.alone.extend(b.tags.iter().copied());
            Some("one by one")
        } else {
            self.unbridged.extend(b.tags.iter().copied());
            Some("without bridging gaps")
        }
    }
}

/// [`plan`] for the points `keep` selects, with their indexes in `points`.
fn plan_some(points: &[&Point], limits: Limits, keep: impl Fn(usize) -> bool) -> Vec<Block> {
    let kept: Vec<usize> = (0..points.len()).filter(|&i| keep(i)).collect();
    let kept_points: Vec<&Point> = kept.iter().map(|&i| points[i]).collect();
    let mut blocks = plan(&kept_points, limits);
    for b in &mut blocks {
        for t in &mut b.tags {
            *t = kept[*t];
        }
    }
    blocks
}

/// Figures for `rtds check`: what one scan costs the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Requests per scan.
    pub requests: usize,
    /// Registers and bits read per scan.
    pub units_read: u32,
    /// Of those, read only to bridge gaps between tags.
    pub units_wasted: u32,
}

/// Summarises a plan.
pub fn summarize(blocks: &[Block], points: &[&Point]) -> Summary {
    let mut s = Summary {
        requests: blocks.len(),
        ..Summary::default()
    };
    for b in blocks {
        s.units_read += u32::from(b.count);
        let mut used = vec![false; b.count as usize];
        for &t in &b.tags {
            let p = points[t];
            let first = (p.address.offset - b.start) as usize;
            for u in used.iter_mut().skip(first).take(p.span() as usize) {
                *u = true;
            }
        }
        s.units_wasted += used.iter().filter(|u| !**u).count() as u32;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::point::{Address, ByteOrder, DataType};
    use super::*;

    fn p(addr: &str, t: DataType) -> Point {
        Point {
            address: Address::parse(addr).unwrap(),
            data_type: t,
            count: 1,
            order: ByteOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
        }
    }

    const LIMITS: Limits = Limits {
        max_registers: 125,
        max_bits: 2000,
        max_gap: 0,
    };

    #[test]
    fn contiguous_and_overlapping_tags_share_a_request() {
        let pts = [
            p("hr:2", DataType::F32),
            p("hr:0", DataType::U16),
            p("hr:1", DataType::U16),
            p("hr:2", DataType::U16), // overlaps the f32
            p("hr:3.4", DataType::Bool),
        ];
        let refs: Vec<&Point> = pts.iter().collect();
        let blocks = plan(&refs, LIMITS);
        assert_eq!(blocks.len(), 1);
        assert_eq!((blocks[0].start, blocks[0].count), (0, 4));
        assert_eq!(summarize(&blocks, &refs).units_wasted, 0);
    }

    #[test]
    fn gaps_are_bridged_only_up_to_max_gap() {
        let pts = [p("hr:0", DataType::U16), p("hr:5", DataType::U16)];
        let refs: Vec<&Point> = pts.iter().collect();
        assert_eq!(plan(&refs, LIMITS).len(), 2);
        let gap4 = Limits {
            max_gap: 4,
            ..LIMITS
        };
        let blocks = plan(&refs, gap4);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].count, 6);
        assert_eq!(
            summarize(&blocks, &refs),
            Summary {
                requests: 1,
                units_read: 6,
                units_wasted: 4
            }
        );
    }

    #[test]
    fn tables_never_mix_and_limits_split() {
        let mut pts: Vec<Point> = (0..300)
            .map(|i| p(&format!("hr:{i}"), DataType::U16))
            .collect();
        pts.push(p("ir:0", DataType::U16));
        pts.push(p("co:0", DataType::Bool));
        let refs: Vec<&Point> = pts.iter().collect();
        let blocks = plan(&refs, LIMITS);
        let hr: Vec<u16> = blocks
            .iter()
            .filter(|b| b.table == Table::HoldingRegister)
            .map(|b| b.count)
            .collect();
        assert_eq!(hr, vec![125, 125, 50]);
        assert_eq!(blocks.len(), 5);
    }

    #[test]
    fn a_refused_bridge_is_split_once_and_stays_split() {
        let pts = [
            p("hr:0", DataType::U16),
            p("hr:5", DataType::U16),
            p("hr:6", DataType::U16),
            p("hr:20", DataType::U16),
        ];
        let refs: Vec<&Point> = pts.iter().collect();
        let limits = Limits {
            max_registers: 125,
            max_bits: 2000,
            max_gap: 20,
        };
        let mut l = Learned::default();
        let b = l.plan(&refs, limits);
        assert_eq!((b.len(), b[0].count), (1, 21));
        // hr:1-4 or 7-19 hold an illegal address; every tag reads alone.
        assert_eq!(l.refused(&b[0], &[]), Some("without bridging gaps"));
        let b = l.plan(&refs, limits);
        let spans: Vec<(u16, u16)> = b.iter().map(|b| (b.start, b.count)).collect();
        assert_eq!(spans, vec![(0, 1), (5, 2), (20, 1)]);
        // The gap-free pair fails too (a memory area boundary): alone.
        assert_eq!(l.refused(&b[1], &[]), Some("one by one"));
        let b = l.plan(&refs, limits);
        assert_eq!(b.len(), 4);
        assert!(b.iter().all(|b| b.tags.len() == 1));
        // A tag that fails alone is read alone until it reads cleanly.
        let mut l = Learned::default();
        let b = l.plan(&refs, limits);
        assert_eq!(l.refused(&b[0], &[3]), Some("with the refused tags alone"));
        assert!(l.failing.contains(&3) && l.unbridged.is_empty());
        let b = l.plan(&refs, limits);
        let spans: Vec<(u16, u16)> = b.iter().map(|b| (b.start, b.count)).collect();
        assert_eq!(spans, vec![(0, 7), (20, 1)]);
    }

    #[test]
    fn a_wide_tag_is_not_split_across_requests() {
        let pts = [p("hr:0", DataType::U16), p("hr:124", DataType::F32)];
        let refs: Vec<&Point> = pts.iter().collect();
        let blocks = plan(&refs, LIMITS);
        assert_eq!(blocks.len(), 2);
        assert_eq!((blocks[1].start, blocks[1].count), (124, 2));
    }
}
