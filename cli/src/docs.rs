//! Shell completions (clap_complete) and man pages (clap_mangen), both generated from the
//! same clap definition as the program itself, so they cannot drift from it. Neither needs a
//! cluster.
use clap::{Args, CommandFactory};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write one page per command (dfsctl.1, dfsctl-put.1, ...) into this directory instead of
    /// printing dfsctl.1 to stdout.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn completions(a: CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "dfsctl", &mut std::io::stdout());
    Ok(0)
}

pub fn man(a: ManArgs) -> anyhow::Result<i32> {
    let cmd = crate::Cli::command();
    match a.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(cmd, &dir)?;
            eprintln!("man pages written to {}", dir.display());
        }
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
    }
    Ok(0)
}
