//! A model of one group of paths of the file system, for the linearizability search.
//!
//! A group is a directory whose entries (files `a`, `b`, `c` and directory `d` in the
//! workload) are only ever touched together: `mv` stays inside the group, `ls` lists the whole
//! group. Each entry is absent, a directory, or a file holding one content (an interned sha256).
//! Applying is pure and deterministic, like the state machine it models.
use crate::history::{code, Entry, Kind, Op, Outcome, Phase, Seen};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Absent,
    Dir,
    File(u32),
}

pub type State = Vec<Slot>;

/// What applying a write answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
}

impl Answer {
    pub fn from_code(c: &str) -> Option<Answer> {
        match c {
            code::OK => Some(Answer::Ok),
            code::NOT_FOUND => Some(Answer::NotFound),
            code::ALREADY_EXISTS => Some(Answer::AlreadyExists),
            code::FAILED_PRECONDITION => Some(Answer::FailedPrecondition),
            _ => None,
        }
    }
}

/// One operation as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Put {
        slot: usize,
        value: u32,
        force: bool,
    },
    Mv {
        from: usize,
        to: usize,
    },
    Rm {
        slot: usize,
    },
    Mkdir {
        slot: usize,
    },
    /// get / stat of one entry.
    Read {
        slot: usize,
    },
    /// ls of the group: every entry.
    List,
}

/// What a linearized operation must have observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Answer(Answer),
    One(Slot),
    All(State),
    /// Unknown outcome: anything.
    Anything,
}

#[derive(Debug, Clone)]
pub struct ModelOp {
    /// Index in the history's op list.
    pub op: usize,
    /// The operation's id in the history.
    pub id: u64,
    pub action: Action,
    pub expect: Expect,
    pub invoke_us: u64,
    pub complete_us: u64,
    pub unknown: bool,
}

/// The entries and contents of one group, and its operations translated for the model.
#[derive(Debug, Default)]
pub struct Group {
    pub names: Vec<String>,
    pub values: Vec<String>,
    value_ids: HashMap<String, u32>,
    pub ops: Vec<ModelOp>,
}

fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Group {
    fn slot(&mut self, path: &str) -> usize {
        let n = name_of(path);
        match self.names.iter().position(|x| x == n) {
            Some(i) => i,
            None => {
                self.names.push(n.to_string());
                self.names.len() - 1
            }
        }
    }

    fn value(&mut self, sha: &str) -> u32 {
        if let Some(v) = self.value_ids.get(sha) {
            return *v;
        }
        let v = self.values.len() as u32;
        self.values.push(sha.to_string());
        self.value_ids.insert(sha.to_string(), v);
        v
    }

    fn seen_slot(&mut self, s: &Seen) -> Option<Slot> {
        Some(match s {
            Seen::Absent => Slot::Absent,
            Seen::Dir => Slot::Dir,
            Seen::File { sha256, .. } => Slot::File(self.value(sha256)),
            Seen::Listing { .. } => return None,
        })
    }

    /// Build the model of one group from its operations (`ops` are indices into `all`).
    /// Operations that carry no information are left out: failed writes that were refused
    /// before the state machine decided anything, and reads without an answer.
    pub fn build(all: &[Op], ops: &[usize]) -> Group {
        let mut g = Group::default();
        // Entry names first, so listings map onto fixed slots.
        for &i in ops {
            let o = &all[i];
            if o.kind != Kind::Ls {
                g.slot(&o.path);
            }
            if let Some(t) = &o.to {
                g.slot(t);
            }
            if let Some(Seen::Listing { entries }) = &o.seen {
                for name in entries.keys() {
                    g.slot(name);
                }
            }
        }
        for &i in ops {
            let o = &all[i];
            let unknown = o.outcome == Outcome::Unknown;
            let expect = match (o.kind.is_write(), o.outcome) {
                (true, Outcome::Ok) => Expect::Answer(Answer::Ok),
                (true, Outcome::Unknown) => Expect::Anything,
                (true, Outcome::Failed) => {
                    // A refusal decided by the state machine is an observation; anything else
                    // (refused before proposing, upload failed) did nothing and saw nothing.
                    let decided = o.kind != Kind::Put || o.phase == Some(Phase::Commit);
                    match Answer::from_code(&o.code) {
                        Some(a) if decided && a != Answer::Ok => Expect::Answer(a),
                        _ => continue,
                    }
                }
                (false, Outcome::Ok) => match &o.seen {
                    Some(Seen::Listing { entries }) => {
                        let mut st = vec![Slot::Absent; g.names.len()];
                        for (name, e) in entries {
                            let s = g.slot(name);
                            st[s] = match e {
                                Entry::Dir => Slot::Dir,
                                Entry::File { sha256 } => Slot::File(g.value(sha256)),
                            };
                        }
                        Expect::All(st)
                    }
                    Some(s) => match g.seen_slot(s) {
                        Some(slot) => Expect::One(slot),
                        None => continue,
                    },
                    None => continue,
                },
                // Reads that got no answer constrain nothing.
                (false, _) => continue,
            };
            let action = match o.kind {
                Kind::Put => {
                    let value = g.value(o.content.as_deref().unwrap_or(""));
                    Action::Put {
                        slot: g.slot(&o.path),
                        value,
                        force: o.force,
                    }
                }
                Kind::Mv => Action::Mv {
                    from: g.slot(&o.path),
                    to: g.slot(o.to.as_deref().unwrap_or("")),
                },
                Kind::Rm => Action::Rm {
                    slot: g.slot(&o.path),
                },
                Kind::Mkdir => Action::Mkdir {
                    slot: g.slot(&o.path),
                },
                Kind::Get | Kind::Stat => Action::Read {
                    slot: g.slot(&o.path),
                },
                Kind::Ls => Action::List,
            };
            g.ops.push(ModelOp {
                op: i,
                id: o.id,
                action,
                expect,
                invoke_us: o.invoke_us,
                complete_us: o.complete_us,
                unknown,
            });
        }
        g
    }

    pub fn initial(&self) -> State {
        vec![Slot::Absent; self.names.len()]
    }

    /// Human-readable state, e.g. `a=3f2c19ab b=absent d=dir`.
    pub fn render(&self, st: &State) -> String {
        st.iter()
            .zip(&self.names)
            .map(|(s, n)| match s {
                Slot::Absent => format!("{n}=absent"),
                Slot::Dir => format!("{n}=dir"),
                Slot::File(v) => {
                    let sha = &self.values[*v as usize];
                    format!("{n}={}", &sha[..sha.len().min(8)])
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Apply `action` to `st`: the new state and the answer (reads answer Ok and change nothing).
pub fn apply(st: &State, action: &Action) -> (State, Answer) {
    let mut s = st.clone();
    let answer = match *action {
        Action::Put { slot, value, force } => match s[slot] {
            Slot::Dir => Answer::FailedPrecondition,
            Slot::File(_) if !force => Answer::AlreadyExists,
            _ => {
                s[slot] = Slot::File(value);
                Answer::Ok
            }
        },
        Action::Mv { from, to } => {
            if s[from] == Slot::Absent {
                Answer::NotFound
            } else if from == to {
                Answer::Ok
            } else if s[to] != Slot::Absent {
                // Onto a file: refused. (Onto a directory would move into it, which the
                // workload never asks for; the model refuses it too.)
                Answer::AlreadyExists
            } else {
                s[to] = s[from];
                s[from] = Slot::Absent;
                Answer::Ok
            }
        }
        Action::Rm { slot } => {
            if s[slot] == Slot::Absent {
                Answer::NotFound
            } else {
                s[slot] = Slot::Absent;
                Answer::Ok
            }
        }
        Action::Mkdir { slot } => {
            if s[slot] == Slot::Absent {
                s[slot] = Slot::Dir;
                Answer::Ok
            } else {
                Answer::AlreadyExists
            }
        }
        Action::Read { .. } | Action::List => Answer::Ok,
    };
    (s, answer)
}

/// Linearize `op` at `st`: the next state, or None if what it observed is impossible here.
pub fn step(st: &State, op: &ModelOp) -> Option<State> {
    match (&op.action, &op.expect) {
        (_, Expect::Anything) => Some(apply(st, &op.action).0),
        (Action::Read { slot }, Expect::One(seen)) => (st[*slot] == *seen).then(|| st.clone()),
        (Action::List, Expect::All(seen)) => (st == seen).then(|| st.clone()),
        (a, Expect::Answer(want)) => {
            let (next, got) = apply(st, a);
            (got == *want).then_some(next)
        }
        _ => None,
    }
}
