//! The fast path of the history checker: builds one linearization in the store's own order and
//! hands it back with a time for every operation in it, for `checker` to verify.
//!
//! The store gives every write it applies the next revision, so writes take effect in revision
//! order: the acknowledged ones, and those of unknown outcome that a read saw. This module places them in that order, puts every read and refusal in the
//! gap between two writes where its state holds, and uses a delete of unknown outcome only where
//! an absent read or a refused delete needs one. It may fail to find an order that exists (then
//! the search runs); whatever it returns is checked step by step, so it never makes a "yes" that
//! is not one.

use std::collections::HashMap;

use super::{Input, Op, Output};

/// A time for each operation of `ops` that takes effect (None: left out, which only an
/// operation of unknown outcome may be), or None when this way finds no order.
///
/// Times are four times the clock plus an offset, so that operations meeting at one clock
/// reading still have an order: a read or refusal invoked at `t` at `4t + 2` or later, a write
/// whose earliest time is `t` at `4t + 3` or later (after what was invoked at that instant).
pub fn times(ops: &[Op]) -> Option<Vec<Option<u128>>> {
    // Writes with a revision: acknowledged ones, and those of unknown outcome that a read saw.
    let seen: HashMap<u64, u64> = ops
        .iter()
        .filter_map(|op| match op.output {
            Output::Read(Some((value, revision))) => Some((value, revision)),
            _ => None,
        })
        .collect();
    let mut writes: Vec<(u64, usize)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match (op.input, op.output) {
            (_, Output::Written { revision }) => Some((revision, i)),
            (Input::Put { value } | Input::Cas { value, .. }, Output::Unknown) => seen.get(&value).map(|&r| (r, i)),
            _ => None,
        })
        .collect();
    writes.sort_unstable();
    let n = writes.len();
    let position = |revision: u64| writes.binary_search_by_key(&revision, |&(r, _)| r).ok();
    let mut bounds = Bounds {
        lo: writes.iter().map(|&(_, i)| ops[i].called).collect(),
        hi: writes.iter().map(|&(_, i)| ops[i].returned).collect(),
    };
    // The item after write k: None when it is absent, else its revision.
    let after = |k: usize| match ops[writes[k].1].input {
        Input::Delete => None,
        _ => Some(writes[k].0),
    };
    // What each read or refusal needs, and in which gap it goes (gap k: after write k-1 and
    // before write k; gap 0 is before every write).
    let mut placed: Vec<(usize, usize, Option<usize>)> = Vec::new(); // (op, gap, unknown delete)
    for (i, op) in ops.iter().enumerate() {
        if let Output::Read(Some((_, revision))) = op.output {
            let k = position(revision)?;
            bounds.place(k + 1, op);
            placed.push((i, k + 1, None));
        }
    }
    if !bounds.propagate() {
        return None;
    }
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| ops[i].called);
    // Unknown deletes, in invocation order.
    let mut deletes: Vec<usize> =
        order.iter().copied().filter(|&i| ops[i].input == Input::Delete && ops[i].output == Output::Unknown).collect();
    // (gap, the unknown delete that empties the item there)
    let mut emptied: Vec<(usize, usize)> = Vec::new();
    for &i in &order {
        let op = &ops[i];
        if !matches!(op.output, Output::Read(None) | Output::DeleteRefused | Output::CasRefused) {
            continue;
        }
        let state_before = |gap: usize| if gap == 0 { None } else { after(gap - 1) };
        let fits = |state: Option<u64>| match (op.input, op.output) {
            (Input::Get, Output::Read(None)) | (Input::Delete, Output::DeleteRefused) => state.is_none(),
            (Input::Cas { expect, .. }, Output::CasRefused) => state.unwrap_or(0) != expect,
            _ => false,
        };
        let needs_absent = op.output != Output::CasRefused;
        let mut done = false;
        // First a gap where the state fits as it is; only then one an unknown delete empties.
        for (gap, with_delete) in (0..=n).map(|g| (g, false)).chain((0..=n).map(|g| (g, true))) {
            if done || !bounds.open(gap, op) {
                continue;
            }
            // A delete of unknown outcome can empty the item in this gap if the write closing
            // the gap can follow an absent item.
            let unknown = if fits(state_before(gap)) {
                if with_delete {
                    continue;
                }
                None
            } else if with_delete && needs_absent && (gap == n || can_follow_absent(&ops[writes[gap].1])) {
                // One delete per gap serves every operation there that needs it.
                let shared = emptied.iter().find(|&&(g, _)| g == gap).map(|&(_, d)| d);
                match shared.or_else(|| deletes.iter().copied().find(|&d| ops[d].called <= op.returned)) {
                    Some(d) if ops[d].called <= op.returned => Some(d),
                    _ => continue,
                }
            } else {
                continue;
            };
            let saved = bounds.clone();
            bounds.place(gap, op);
            if bounds.propagate() {
                if let Some(d) = unknown {
                    if !emptied.contains(&(gap, d)) {
                        emptied.push((gap, d));
                        deletes.retain(|&x| x != d);
                    }
                }
                placed.push((i, gap, unknown));
                done = true;
                continue;
            }
            bounds = saved;
        }
        if !done {
            return None;
        }
    }
    // Times: each write as early as its bounds allow, strictly after the one before.
    let mut times = vec![None; ops.len()];
    let mut write_time = Vec::with_capacity(n);
    let mut last = 0u128;
    for k in 0..n {
        let t = (4 * bounds.lo[k] as u128 + 3).max(last + 4);
        if t > 4 * bounds.hi[k] as u128 + 3 {
            return None;
        }
        write_time.push(t);
        times[writes[k].1] = Some(t);
        last = t;
    }
    let gap_start = |gap: usize| if gap == 0 { 0 } else { write_time[gap - 1] + 1 };
    let earliest = |i: usize, gap: usize| gap_start(gap).max(4 * ops[i].called as u128 + 2);
    // Each unknown delete goes just before the first operation in its gap that needs it, so
    // that what reads the item before it still sees the write before the gap.
    for &(i, gap, unknown) in &placed {
        if let Some(d) = unknown {
            let t = earliest(i, gap).saturating_sub(1).max(earliest(d, gap));
            times[d] = Some(times[d].map_or(t, |other: u128| other.min(t)));
        }
    }
    for &(i, gap, unknown) in &placed {
        let after_delete = unknown.and_then(|d| times[d]).map_or(0, |t| t + 1);
        times[i] = Some(earliest(i, gap).max(after_delete));
    }
    Some(times)
}

/// A write that can take effect on an absent item: a put, or a conditional put expecting absence.
fn can_follow_absent(op: &Op) -> bool {
    matches!(op.input, Input::Put { .. } | Input::Cas { expect: 0, .. })
}

/// Earliest and latest clock reading at which each acknowledged write (in revision order) may
/// take effect.
#[derive(Clone)]
struct Bounds {
    lo: Vec<u64>,
    hi: Vec<u64>,
}

impl Bounds {
    /// Whether `op` can go in `gap` as the bounds stand.
    fn open(&self, gap: usize, op: &Op) -> bool {
        let after_previous = gap.checked_sub(1).map_or(0, |k| self.lo[k]);
        let before_next = self.hi.get(gap).copied().unwrap_or(u64::MAX);
        after_previous <= op.returned && op.called <= before_next
    }

    /// Puts `op` in `gap`: the write before it takes effect by `op`'s return, the one after it
    /// no earlier than `op`'s invocation.
    fn place(&mut self, gap: usize, op: &Op) {
        if let Some(k) = gap.checked_sub(1) {
            self.hi[k] = self.hi[k].min(op.returned);
        }
        if let Some(lo) = self.lo.get_mut(gap) {
            *lo = (*lo).max(op.called);
        }
    }

    /// Spreads the bounds along the revision order; false when some write has no time left.
    fn propagate(&mut self) -> bool {
        for k in 1..self.lo.len() {
            self.lo[k] = self.lo[k].max(self.lo[k - 1]);
        }
        for k in (0..self.hi.len().saturating_sub(1)).rev() {
            self.hi[k] = self.hi[k].min(self.hi[k + 1]);
        }
        self.lo.iter().zip(&self.hi).all(|(lo, hi)| lo <= hi)
    }
}
