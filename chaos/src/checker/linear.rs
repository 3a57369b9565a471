//! Linearizability of one group's operations against the model (`model.rs`).
//!
//! The search walks the history in time order and keeps every configuration the system could
//! be in (the "just in time" form of the Wing–Gong/Lowe search that Knossos also uses): the
//! model state, which open operations are already linearized, and which unknown operations were
//! applied. At an operation's completion, every configuration is extended by linearizing open
//! operations (in every order) until that operation is linearized; configurations where that is
//! impossible are dropped. If none is left, no order of the operations explains what the clients
//! saw: the history is not linearizable, and that operation is where it broke.
//!
//! Unknown operations (timed out, or an error after a retry) may take effect at any point after
//! their invocation, up to a grace after their completion (or without bound), or never: they
//! are optional. At the end of its window an unknown operation has either been applied or never
//! will be. Two pruning rules keep the search small and lose nothing: applying an unknown
//! operation that changes nothing is skipped (not applying it is always allowed), and of two
//! configurations with the same state and linearized set, the one that applied a superset of
//! unknown operations is dropped (the other can still do everything it can).
//!
//! This exhaustive search (`check_jit`) names the first operation that breaks and forgets the
//! past as it goes; the depth-first search below (`check_dfs`) is much faster on valid
//! histories but must exhaust every alternative before it can say "no". Both are exact for the
//! same assumption, and a unit test checks that they agree on random histories.
use super::model::{apply, step, Group, ModelOp, State};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinResult {
    Ok {
        ops: usize,
        unknown: usize,
        /// Configurations explored.
        explored: usize,
    },
    Violation {
        /// Index (in the history's op list) of the operation that cannot be linearized.
        op: usize,
        /// What the model could have been in just before it, rendered.
        states: Vec<String>,
    },
    Inconclusive {
        reason: String,
    },
}

#[derive(Clone, Copy)]
enum Ev {
    Call(usize),
    Ret(usize),
    UCall(usize),
    Expire(usize),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Config {
    state: State,
    /// Known operations linearized but not yet completed (model op indices, sorted).
    lin: Vec<u32>,
    /// Unknown operations applied (sorted).
    applied: Vec<u32>,
}

fn is_subset(a: &[u32], b: &[u32]) -> bool {
    // Both sorted.
    let mut j = 0;
    for x in a {
        while j < b.len() && b[j] < *x {
            j += 1;
        }
        if j == b.len() || b[j] != *x {
            return false;
        }
        j += 1;
    }
    true
}

fn with(v: &[u32], x: u32) -> Vec<u32> {
    let mut out = v.to_vec();
    if let Err(p) = out.binary_search(&x) {
        out.insert(p, x);
    }
    out
}

fn without(v: &[u32], x: u32) -> Vec<u32> {
    v.iter().copied().filter(|y| *y != x).collect()
}

/// Configurations, keeping only the minimal applied sets per (state, linearized set).
#[derive(Default)]
struct Frontier {
    map: HashMap<(State, Vec<u32>), Vec<Vec<u32>>>,
}

impl Frontier {
    /// Insert unless dominated; returns whether it was new.
    fn insert(&mut self, c: &Config) -> bool {
        let list = self
            .map
            .entry((c.state.clone(), c.lin.clone()))
            .or_default();
        if list.iter().any(|a| is_subset(a, &c.applied)) {
            return false;
        }
        list.retain(|a| !is_subset(&c.applied, a));
        list.push(c.applied.clone());
        true
    }

    fn len(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }

    fn into_configs(self) -> Vec<Config> {
        let mut out = Vec::new();
        for ((state, lin), list) in self.map {
            for applied in list {
                out.push(Config {
                    state: state.clone(),
                    lin: lin.clone(),
                    applied,
                });
            }
        }
        out
    }
}

/// Every configuration reachable from `configs` by linearizing open operations, stopping at
/// the ones where `target` is done: a known operation linearized, or an unknown one applied.
/// Returns them (with a known target dropped from the linearized set), or None when more than
/// `budget` configurations were explored.
fn closure(
    ops: &[ModelOp],
    configs: Vec<Config>,
    open_known: &[u32],
    open_unknown: &[u32],
    target: Ev,
    budget: usize,
    explored: &mut usize,
) -> Option<Frontier> {
    let mut seen = Frontier::default();
    let mut out = Frontier::default();
    let mut stack: Vec<Config> = Vec::new();
    for c in configs {
        if seen.insert(&c) {
            stack.push(c);
        }
    }
    let mut here = 0usize;
    while let Some(c) = stack.pop() {
        *explored += 1;
        here += 1;
        if here > budget {
            return None;
        }
        match target {
            Ev::Ret(o) if c.lin.binary_search(&(o as u32)).is_ok() => {
                out.insert(&Config {
                    lin: without(&c.lin, o as u32),
                    ..c
                });
                continue;
            }
            Ev::Expire(u) if c.applied.binary_search(&(u as u32)).is_ok() => {
                out.insert(&c);
                continue;
            }
            _ => {}
        }
        for &k in open_known {
            if c.lin.binary_search(&k).is_ok() {
                continue;
            }
            if let Some(next) = step(&c.state, &ops[k as usize]) {
                let n = Config {
                    state: next,
                    lin: with(&c.lin, k),
                    applied: c.applied.clone(),
                };
                if seen.insert(&n) {
                    stack.push(n);
                }
            }
        }
        for &u in open_unknown {
            if c.applied.binary_search(&u).is_ok() {
                continue;
            }
            let (next, _) = apply(&c.state, &ops[u as usize].action);
            if next == c.state {
                continue;
            }
            let n = Config {
                state: next,
                lin: c.lin.clone(),
                applied: with(&c.applied, u),
            };
            if seen.insert(&n) {
                stack.push(n);
            }
        }
    }
    Some(out)
}

/// Check one group exhaustively. `grace_us`: how long after its completion an unknown
/// operation may still take effect (None: any time later); it may also never take effect.
/// `budget`: most configurations one step may explore before the search gives up (the total
/// grows with the history; each step forgets the past). Names the first operation whose
/// completion no configuration explains.
pub fn check_jit(group: &Group, grace_us: Option<u64>, budget: usize) -> LinResult {
    let ops: &[ModelOp] = &group.ops;
    let mut events: Vec<(u64, u8, Ev)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        if o.unknown {
            events.push((o.invoke_us, 0, Ev::UCall(i)));
            if let Some(g) = grace_us {
                events.push((o.complete_us.saturating_add(g), 1, Ev::Expire(i)));
            }
        } else {
            events.push((o.invoke_us, 0, Ev::Call(i)));
            events.push((o.complete_us, 1, Ev::Ret(i)));
        }
    }
    // Calls before completions at the same instant: the more permissive order.
    events.sort_by_key(|(t, k, _)| (*t, *k));

    let mut configs = vec![Config {
        state: group.initial(),
        lin: vec![],
        applied: vec![],
    }];
    let mut open_known: Vec<u32> = Vec::new();
    let mut open_unknown: Vec<u32> = Vec::new();
    let mut explored = 0usize;
    let unknown = ops.iter().filter(|o| o.unknown).count();

    for (_, _, ev) in events {
        match ev {
            Ev::Call(i) => open_known.push(i as u32),
            Ev::UCall(i) => open_unknown.push(i as u32),
            Ev::Expire(u) => {
                let u32_ = u as u32;
                if !open_unknown.contains(&u32_) {
                    continue; // already settled
                }
                // Either it took effect by now (possibly after other open operations), or it
                // never will.
                let untouched: Vec<Config> = configs
                    .iter()
                    .filter(|c| c.applied.binary_search(&u32_).is_err())
                    .cloned()
                    .collect();
                let Some(mut out) = closure(
                    ops,
                    configs,
                    &open_known,
                    &open_unknown,
                    ev,
                    budget,
                    &mut explored,
                ) else {
                    return LinResult::Inconclusive {
                        reason: format!(
                            "the exhaustive search explored more than {budget} configurations at the end of unknown op {}'s window",
                            ops[u].id
                        ),
                    };
                };
                for c in &untouched {
                    out.insert(c);
                }
                open_unknown.retain(|x| *x != u32_);
                let mut f = Frontier::default();
                for mut c in out.into_configs() {
                    c.applied.retain(|x| *x != u32_);
                    f.insert(&c);
                }
                configs = f.into_configs();
            }
            Ev::Ret(o) => {
                let before: Vec<State> = configs.iter().map(|c| c.state.clone()).collect();
                let Some(out) = closure(
                    ops,
                    configs,
                    &open_known,
                    &open_unknown,
                    ev,
                    budget,
                    &mut explored,
                ) else {
                    return LinResult::Inconclusive {
                        reason: format!(
                            "the exhaustive search explored more than {budget} configurations to explain op {}",
                            ops[o].id
                        ),
                    };
                };
                open_known.retain(|x| *x != o as u32);
                if out.len() == 0 {
                    let mut states: Vec<String> = before.iter().map(|s| group.render(s)).collect();
                    states.sort();
                    states.dedup();
                    states.truncate(8);
                    return LinResult::Violation {
                        op: ops[o].op,
                        states,
                    };
                }
                configs = out.into_configs();
                // An unknown operation applied in every configuration is settled: retire it.
                if let Some(first) = configs.first() {
                    let common: Vec<u32> = first
                        .applied
                        .iter()
                        .copied()
                        .filter(|u| configs.iter().all(|c| c.applied.binary_search(u).is_ok()))
                        .collect();
                    if !common.is_empty() {
                        open_unknown.retain(|x| !common.contains(x));
                        let mut f = Frontier::default();
                        for mut c in configs.drain(..) {
                            c.applied.retain(|x| !common.contains(x));
                            f.insert(&c);
                        }
                        configs = f.into_configs();
                    }
                }
            }
        }
    }
    LinResult::Ok {
        ops: ops.len(),
        unknown,
        explored,
    }
}

/// The set of linearized operations, by rank (operations ordered by invocation): every rank
/// below `below`, plus `extra` (sorted, all above `below`). Compact because operations are
/// linearized roughly in invocation order.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
struct Linearized {
    below: u32,
    extra: Vec<u32>,
}

impl Linearized {
    fn with(&self, r: u32) -> Linearized {
        let mut n = self.clone();
        if r == n.below {
            n.below += 1;
            while n.extra.first() == Some(&n.below) {
                n.extra.remove(0);
                n.below += 1;
            }
        } else if let Err(p) = n.extra.binary_search(&r) {
            n.extra.insert(p, r);
        }
        n
    }
}

const NIL: usize = usize::MAX;

struct Frame {
    /// Index of the choice taken, in `choices` order (recomputed identically on backtrack).
    choice: usize,
    entry: usize,
    state: State,
    lin: Linearized,
}

/// Depth-first search for one linearization (Wing & Gong, with Lowe's memoization, as in
/// Porcupine): walk the history's call and return entries in time order; at a call, linearize
/// that operation if the model allows it and the resulting (linearized set, state) was never
/// seen, and start again from the first entry left; at the return of an operation not
/// linearized yet, undo the last choice. An unknown operation has two choices, applied or not
/// (not applied is the same as never happening), and its "return" is its completion plus the
/// grace (never, without one). Fast on valid histories (it walks straight through); on invalid
/// ones it must exhaust every alternative, so `check_jit` is then used to say where it breaks.
pub fn check_dfs(group: &Group, grace_us: Option<u64>, budget: usize) -> LinResult {
    let ops: &[ModelOp] = &group.ops;
    let n = ops.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (ops[i].invoke_us, i));
    let mut rank = vec![0u32; n];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r as u32;
    }
    // Entries: (time, 0 = call / 1 = return, op).
    let mut ents: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        ents.push((o.invoke_us, 0, i));
        let end = if o.unknown {
            match grace_us {
                Some(g) => o.complete_us.saturating_add(g),
                None => u64::MAX,
            }
        } else {
            o.complete_us
        };
        ents.push((end, 1, i));
    }
    ents.sort();
    let head = ents.len();
    let mut next = vec![NIL; ents.len() + 1];
    let mut prev = vec![NIL; ents.len() + 1];
    let mut call_at = vec![0usize; n];
    let mut ret_at = vec![0usize; n];
    let mut last = head;
    for (e, &(_, kind, op)) in ents.iter().enumerate() {
        next[last] = e;
        prev[e] = last;
        last = e;
        if kind == 0 {
            call_at[op] = e;
        } else {
            ret_at[op] = e;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, op: usize| {
        for e in [call_at[op], ret_at[op]] {
            next[prev[e]] = next[e];
            if next[e] != NIL {
                prev[next[e]] = prev[e];
            }
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, op: usize| {
        for e in [ret_at[op], call_at[op]] {
            next[prev[e]] = e;
            if next[e] != NIL {
                prev[next[e]] = e;
            }
        }
    };

    let mut cache: std::collections::HashSet<(Linearized, State)> = Default::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut state = group.initial();
    let mut lin = Linearized::default();
    let mut first_choice = 0usize;
    let mut steps = 0usize;
    // Deepest dead end: (linearized count, blocking op, state there).
    let mut deepest: (usize, usize, State) = (0, 0, state.clone());
    let mut choices: Vec<(usize, u8)> = Vec::new();
    loop {
        if next[head] == NIL {
            return LinResult::Ok {
                ops: n,
                unknown: ops.iter().filter(|o| o.unknown).count(),
                explored: steps,
            };
        }
        // The choices here: operations called before the first pending completion, in the
        // order they were called (the order that usually works); an unknown one is first tried
        // applied, then without effect.
        choices.clear();
        let mut e = next[head];
        while e != NIL && ents[e].1 == 0 {
            choices.push((e, 0));
            if ops[ents[e].2].unknown {
                choices.push((e, 1));
            }
            e = next[e];
        }
        let blocking = if e == NIL { None } else { Some(ents[e].2) };
        let mut moved = false;
        for (ci, &(entry, option)) in choices.iter().enumerate().skip(first_choice) {
            steps += 1;
            if steps > budget {
                let o = &ops[deepest.1];
                return LinResult::Inconclusive {
                    reason: format!(
                        "depth-first search gave up after {budget} steps; the furthest it got was {} operations linearized, blocked at op {} (completed at {:.3} s)",
                        deepest.0,
                        o.id,
                        o.complete_us as f64 / 1e6
                    ),
                };
            }
            let op = ents[entry].2;
            let o = &ops[op];
            let candidate = if !o.unknown {
                step(&state, o)
            } else if option == 0 {
                let (s, _) = apply(&state, &o.action);
                (s != state).then_some(s)
            } else {
                Some(state.clone())
            };
            let Some(ns) = candidate else { continue };
            let nl = lin.with(rank[op]);
            if cache.insert((nl.clone(), ns.clone())) {
                stack.push(Frame {
                    choice: ci,
                    entry,
                    state: std::mem::replace(&mut state, ns),
                    lin: std::mem::replace(&mut lin, nl),
                });
                lift(&mut next, &mut prev, op);
                moved = true;
                break;
            }
        }
        if moved {
            first_choice = 0;
            continue;
        }
        // Nothing can be linearized before the first pending completion: undo the last choice.
        if stack.len() >= deepest.0 {
            if let Some(b) = blocking {
                deepest = (stack.len(), b, state.clone());
            }
        }
        let Some(f) = stack.pop() else {
            return LinResult::Violation {
                op: ops[deepest.1].op,
                states: vec![group.render(&deepest.2)],
            };
        };
        unlift(&mut next, &mut prev, ents[f.entry].2);
        state = f.state;
        lin = f.lin;
        first_choice = f.choice + 1;
    }
}
