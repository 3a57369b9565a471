//! What a mount needs from the metadata, on a real 3-member cluster: inode numbers that survive
//! rename, overwrite and a restart and agree on every member; modes and times; symbolic links;
//! SetAttr; rename with no-replace and replace; listing in pages.
use dfs_client::{Client, Error};
use dfs_proto::{FileInfo, RenameMode};
use dfs_tests::*;
use std::sync::Arc;
use std::time::Duration;

fn client(c: &Cluster, meta: &str) -> Client {
    Client::connect(&c.client_options(meta)).unwrap()
}

/// The inode number of `path` (an entry of `/`) as one member sees it in its own applied state.
fn stale_ino(c: &Cluster, addr: &str, path: &str) -> Option<u64> {
    let r = c.ctl_env(addr, &c.auth, &["--json", "ls", "--stale", "/"], None);
    if r.code != 0 {
        return None;
    }
    r.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["path"] == path)
        .and_then(|v| v["ino"].as_u64())
}

#[test]
fn inode_numbers_modes_links_and_renames_through_the_cluster() {
    let c = Cluster::up(3, 1, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let cl = client(&c, &c.meta);
    let (f_ino, d_mtime) = rt.block_on(async {
        let root = cl.stat("/").await.unwrap();
        assert_eq!(root.ino, 1);
        assert_eq!(root.mode, 0o755);
        // The cluster's birth (after 2020), not 1970.
        assert!(root.created_ms > 1_577_836_800_000, "{root:?}");
        cl.mkdir("/d", false).await.unwrap();
        let d = cl.stat("/d").await.unwrap();
        assert!(d.ino > 1 && d.mode == 0o755, "{d:?}");
        (d.ino, d.modified_ms)
    });
    c.put_data(&c.auth, "/d/f", b"first", &[]).ok();
    let f = rt.block_on(async {
        let f = cl.stat("/d/f").await.unwrap();
        assert!(f.ino > f_ino && f.mode == 0o644, "{f:?}");
        let d = cl.stat("/d").await.unwrap();
        assert!(
            d.modified_ms >= d_mtime && d.ctime_ms == d.modified_ms,
            "{d:?}"
        );
        cl.rename("/d/f", "/d/g").await.unwrap();
        assert_eq!(cl.stat("/d/g").await.unwrap().ino, f.ino, "rename keeps it");
        f
    });
    c.put_data(&c.auth, "/d/g", b"second version", &["-f"]).ok();
    rt.block_on(async {
        let g = cl.stat("/d/g").await.unwrap();
        assert_eq!((g.ino, g.size), (f.ino, 14), "a new version keeps it");

        // SetAttr: mode and mtime; ctime moves, creation stays.
        cl.set_attr("/d/g", Some(0o600), Some(1_000)).await.unwrap();
        let g2 = cl.stat("/d/g").await.unwrap();
        assert_eq!((g2.mode, g2.modified_ms), (0o600, 1_000));
        assert!(g2.ctime_ms >= g.ctime_ms && g2.created_ms == g.created_ms);
        match cl.set_attr("/d/g", Some(0o170_000), None).await {
            Err(Error::InvalidName(_)) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }

        // Symbolic links.
        cl.symlink("/d/l", "g").await.unwrap();
        assert_eq!(cl.readlink("/d/l").await.unwrap(), "g");
        let l = cl.stat("/d/l").await.unwrap();
        assert!(l.is_symlink && !l.is_dir && l.ino > f.ino, "{l:?}");
        assert!(matches!(
            cl.symlink("/d/l", "x").await,
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            cl.symlink("/d/long", &"t".repeat(4097)).await,
            Err(Error::InvalidName(_))
        ));
        assert!(matches!(
            cl.readlink("/d/g").await,
            Err(Error::InvalidName(_))
        ));

        // Rename modes: no-replace refuses, replace swaps atomically, mv moves into a dir.
        cl.mkdir("/e", false).await.unwrap();
        assert!(matches!(
            cl.rename_with("/d/l", "/d/g", RenameMode::RenameNoreplace)
                .await,
            Err(Error::Exists(_))
        ));
        cl.rename_with("/d/l", "/d/g", RenameMode::RenameReplace)
            .await
            .unwrap();
        let g3 = cl.stat("/d/g").await.unwrap();
        assert!(g3.is_symlink && g3.ino == l.ino, "{g3:?}");
        assert!(matches!(
            cl.rename_with("/e", "/d", RenameMode::RenameReplace).await,
            Err(Error::NotEmpty(_))
        ));
        cl.rename("/d/g", "/e").await.unwrap();
        assert_eq!(cl.readlink("/e/g").await.unwrap(), "g");
    });
    let ls = c.ctl(&["ls", "-l", "/e"]).ok();
    assert!(ls.starts_with("l ") && ls.contains("/e/g -> g"), "{ls}");
    let st = c.ctl(&["stat", "/e/g"]).ok();
    assert!(
        st.contains("symbolic link -> g") && !st.contains("sha256"),
        "{st}"
    );
    c.ctl(&["rm", "/e/g"]).ok();
    assert!(c.ctl(&["ls", "/e"]).ok().trim().is_empty());

    // Every member holds the same numbers, also after a restart.
    let d_ino = rt.block_on(cl.stat("/d")).unwrap().ino;
    c.wait_converged(3, 1);
    for (i, addr) in c.meta_addrs().iter().enumerate() {
        assert_eq!(stale_ino(&c, addr, "/d"), Some(d_ino), "member {}", i + 1);
    }
    c.kill("meta-2");
    c.start("meta-2");
    let addr2 = c.meta_addrs()[1].clone();
    wait_until(Duration::from_secs(60), "meta-2 back", || {
        stale_ino(&c, &addr2, "/d") == Some(d_ino)
    });
    rt.block_on(async {
        cl.mkdir("/after", false).await.unwrap();
        let a = cl.stat("/after").await.unwrap();
        assert!(a.ino > d_ino, "numbers keep growing after a restart");
    });
}

#[test]
fn a_big_directory_is_listed_in_pages() {
    let c = Cluster::up(1, 0, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let cl = Arc::new(client(&c, &c.meta));
    const N: usize = 2500;
    rt.block_on(async {
        cl.mkdir("/big", false).await.unwrap();
        // Links are the cheapest entries; created 50 at a time (the leader batches them).
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let cl = cl.clone();
            set.spawn(async move { cl.symlink(&format!("/big/l{i:05}"), "t").await });
            if set.len() >= 50 {
                set.join_next().await.unwrap().unwrap().unwrap();
            }
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        let (first, next) = cl.list_page("/big", "", 5000).await.unwrap();
        assert_eq!(first.len(), 1000, "the server caps a page");
        assert!(!next.is_empty(), "a capped page says where to go on");
        let (second, _) = cl.list_page("/big", &next, 1).await.unwrap();
        assert_eq!(
            second[0].path, "/big/l01000",
            "the token resumes after the last entry"
        );
        let all: Vec<FileInfo> = cl.list("/big").await.unwrap();
        let names: Vec<String> = all.iter().map(|f| f.path.clone()).collect();
        let want: Vec<String> = (0..N).map(|i| format!("/big/l{i:05}")).collect();
        assert_eq!(names, want);
        // A page token is sealed by the cluster for this directory and this user: a made-up
        // one, or one from another directory, is refused with a sentence, not read as a name.
        let e = cl.list_page("/big", "l02498x", 10).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("page token was not issued by this cluster"),
            "{e}"
        );
        cl.mkdir("/other", false).await.unwrap();
        let e = cl.list_page("/other", &next, 10).await.unwrap_err();
        assert!(e.to_string().contains("page token is stale"), "{e}");
        // An export page token is sealed the same way.
        let forged = dfs_proto::ExportRequest {
            after: "0.2f62~0123456789abcdef0123456789abcdef".into(),
        };
        let e = dfs_client::rpc!(cl.conn, export, forged).unwrap_err();
        assert!(
            e.message().contains("export page token was not issued"),
            "{e}"
        );
    });
    // dfsctl ls (page by page) sees them all.
    let out = c.ctl(&["ls", "/big"]).ok();
    assert_eq!(out.lines().count(), N);
}
