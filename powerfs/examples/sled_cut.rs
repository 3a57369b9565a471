//! Does sled survive a power cut the way metasrv uses it? `sled_cut DIR write` writes like a
//! metasrv (a Raft log tree that grows and is purged, a state tree overwritten in place, every
//! batch made durable with flush + fdatasync of sled's data file, as `metasrv::store::Durable`)
//! and prints `acked N` after each durable batch; `sled_cut DIR check N` opens the store again,
//! reads every page and checks that every log entry up to N that was not purged is there.
//! Run on a powerfs and cut it between the two (`scripts/sled-cut` does it in a loop).
use std::time::Duration;

fn open(dir: &std::path::Path, bg_flush: bool) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(64 * 1024 * 1024)
        .flush_every_ms(bg_flush.then_some(1000))
        .mode(sled::Mode::HighThroughput)
        .open()
}

fn value(i: u64) -> Vec<u8> {
    let len = 200 + (i * 7919 % 6000) as usize;
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

const KEEP: u64 = 3000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let bg_flush = std::env::var("BG_FLUSH").map_or(true, |v| v != "0");
    match args[2].as_str() {
        "write" => {
            // As metasrv: appends to the log tree (batches, purged behind) acknowledged only
            // after a flush + fdatasync on a syncer thread that serves every waiter at once,
            // while another thread keeps rewriting the state tree.
            let db = open(&dir, bg_flush).expect("open");
            let data = std::fs::File::open(dir.join("db")).expect("data file");
            let log = db.open_tree("log").unwrap();
            let state = db.open_tree("state").unwrap();
            let start = log.last().unwrap().map_or(0, |(k, _)| {
                u64::from_be_bytes(k.as_ref().try_into().unwrap()) + 1
            });
            let (tx, rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<()>>();
            {
                let db = db.clone();
                std::thread::spawn(move || {
                    while let Ok(first) = rx.recv() {
                        let mut waiters = vec![first];
                        waiters.extend(rx.try_iter());
                        db.flush().unwrap();
                        data.sync_data().unwrap();
                        for w in waiters {
                            let _ = w.send(());
                        }
                    }
                });
            }
            {
                let state = state.clone();
                std::thread::spawn(move || {
                    let mut n: u64 = 0;
                    loop {
                        let mut b = sled::Batch::default();
                        for _ in 0..50 {
                            b.insert(&(n * 2654435761 % 20000).to_be_bytes(), value(n * 3));
                            n += 1;
                        }
                        state.apply_batch(b).unwrap();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
            }
            let mut i = start;
            loop {
                let mut b = sled::Batch::default();
                for _ in 0..20 {
                    b.insert(&i.to_be_bytes(), value(i));
                    if i >= KEEP {
                        b.remove(&(i - KEEP).to_be_bytes());
                    }
                    i += 1;
                }
                log.apply_batch(b).unwrap();
                let (w, done) = std::sync::mpsc::channel();
                tx.send(w).unwrap();
                done.recv().unwrap();
                println!("acked {}", i - 1);
            }
        }
        "check" => {
            let acked: u64 = args[3].parse().unwrap();
            let db = match open(&dir, bg_flush) {
                Ok(db) => db,
                Err(e) => {
                    println!("OPEN FAILED: {e}");
                    std::process::exit(3);
                }
            };
            for name in ["log", "state"] {
                let t = db.open_tree(name).unwrap();
                for kv in t.iter() {
                    if let Err(e) = kv {
                        println!("READ FAILED in {name}: {e}");
                        std::process::exit(4);
                    }
                }
            }
            let log = db.open_tree("log").unwrap();
            // Up to two batches after the last ack may have been written (and purged older entries).
            for i in acked.saturating_sub(KEEP - 100)..=acked {
                match log.get(i.to_be_bytes()) {
                    Ok(Some(v)) if v.as_ref() == value(i).as_slice() => {}
                    other => {
                        println!(
                            "LOST log {i} (acked {acked}): {:?}",
                            other.map(|o| o.map(|v| v.len()))
                        );
                        std::process::exit(5);
                    }
                }
            }
            println!("ok {acked}");
        }
        _ => panic!("write|check"),
    }
}
