//! dfsctl binary: parse, run, print one error line, exit with the documented code.
use clap::Parser;

fn main() {
    // Like other Unix tools: a closed pipe (`dfsctl ls | head`) ends the process quietly.
    // SAFETY: resetting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Whole chunks (8 MiB by default) are buffered while in flight.
    dfs_common::allocator::keep_freed_buffers(32 << 20);
    let cli = dfsctl::Cli::parse();
    // Every connection this process makes reads DFS_TLS_CA (dfs_client::tls_from_env): a
    // --tls-ca flag sets it, before any thread starts.
    match &cli.tls_ca {
        Some(ca) if !ca.as_os_str().is_empty() => std::env::set_var("DFS_TLS_CA", ca),
        _ => std::env::remove_var("DFS_TLS_CA"),
    }
    let json = cli.json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Sockets are written from the runtime's threads: a chunk server that dies mid-write
        // must be an EPIPE error there (retried, reported), never a SIGPIPE that kills dfsctl
        // silently. (The main thread keeps the quiet end of `dfsctl ls | head`.)
        .on_thread_start(block_sigpipe)
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(dfsctl::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            dfsctl::output::print_error(json, &e);
            1
        }
    };
    std::process::exit(code);
}

/// Keep SIGPIPE from this thread: a write to a closed socket returns EPIPE instead.
fn block_sigpipe() {
    // SAFETY: sigset operations on a local set, and pthread_sigmask on the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
