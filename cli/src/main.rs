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
    let json = cli.json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
