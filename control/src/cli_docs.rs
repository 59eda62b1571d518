//! Man pages and shell completions made from a binary's own command-line
//! definition, so they never drift from `--help`: `NAME generate-docs OUT`
//! (hidden; `cargo xtask package` runs it) writes `OUT/man/NAME.1` and one
//! page per subcommand (`NAME-SUB.1`), each with an EXIT STATUS section, and
//! `OUT/completions/` for bash (`NAME`), zsh (`_NAME`) and fish
//! (`NAME.fish`).
use std::path::{Path, PathBuf};

use clap::Command;
use clap_complete::Shell;

/// Failure to write the documents.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct DocsError {
    /// The file or folder.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> DocsError + '_ {
    move |source| DocsError {
        path: path.to_path_buf(),
        source,
    }
}

/// One exit status of a binary and what it means.
pub type ExitStatus = (u8, &'static str);

/// The exit status every client binary documents.
pub const CLIENT_EXIT_STATUS: &[ExitStatus] = &[
    (0, "the command did what it says."),
    (
        1,
        "it failed: one line on standard error, `NAME: error: ` and its causes.",
    ),
    (
        2,
        "the command line is wrong (an unknown flag, a missing or bad argument).",
    ),
];

/// Writes the man pages and completions of `cmd` (the binary's whole
/// definition, as `Parser::command()` gives it) into `out`; returns the
/// files written.
pub fn write(
    cmd: Command,
    exit_status: &[ExitStatus],
    out: &Path,
) -> Result<Vec<PathBuf>, DocsError> {
    let mut cmd = cmd;
    cmd.build();
    let mut written = Vec::new();
    let man = out.join("man");
    std::fs::create_dir_all(&man).map_err(io_at(&man))?;
    write_pages(&cmd, cmd.get_name(), exit_status, &man, &mut written)?;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions).map_err(io_at(&completions))?;
    let name = cmd.get_name().to_owned();
    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let path = completions.join(file);
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut text);
        std::fs::write(&path, text).map_err(io_at(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// The page of `cmd` (called `page` on the system: `s2uc-connect`) and of
/// each visible subcommand, recursively.
fn write_pages(
    cmd: &Command,
    page: &str,
    exit_status: &[ExitStatus],
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), DocsError> {
    let path = dir.join(format!("{page}.1"));
    let text = render_page(cmd, page, exit_status).map_err(io_at(&path))?;
    std::fs::write(&path, text).map_err(io_at(&path))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_page = format!("{page}-{}", sub.get_name());
        write_pages(sub, &sub_page, exit_status, dir, written)?;
    }
    Ok(())
}

/// One page: clap_mangen's sections, then EXIT STATUS and SEE ALSO.
fn render_page(cmd: &Command, page: &str, exit_status: &[ExitStatus]) -> std::io::Result<Vec<u8>> {
    let named = cmd.clone().name(page.to_owned());
    let man = clap_mangen::Man::new(named);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if cmd.get_after_long_help().is_some() || cmd.get_after_help().is_some() {
        man.render_extra_section(&mut out)?;
    }
    let binary = page.split('-').next().unwrap_or(page);
    out.extend_from_slice(b".SH \"EXIT STATUS\"\n");
    for (code, meaning) in exit_status {
        let meaning = roff_escape(&meaning.replace("NAME", binary));
        out.extend_from_slice(format!(".TP\n\\fB{code}\\fR\n{meaning}\n").as_bytes());
    }
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    if page != binary {
        out.extend_from_slice(format!(".SH \"SEE ALSO\"\n\\fB{binary}\\fR(1)\n").as_bytes());
    }
    Ok(out)
}

/// Text safe in a roff paragraph: backslashes doubled, and a leading dot
/// or quote (a request to roff) guarded.
fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn demo() -> Command {
        Command::new("demo")
            .version("1.2.3")
            .about("A demo tool")
            .arg(
                Arg::new("verbose")
                    .long("verbose")
                    .action(ArgAction::SetTrue)
                    .help("Say more"),
            )
            .subcommand(
                Command::new("run")
                    .about("Run it")
                    .arg(Arg::new("fast").long("fast").action(ArgAction::SetTrue)),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn pages_for_the_command_and_each_visible_subcommand_with_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(demo(), CLIENT_EXIT_STATUS, dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("man/demo.1")).unwrap();
        assert!(page.contains("A demo tool"), "{page}");
        assert!(page.contains("verbose"), "{page}");
        assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
        assert!(
            page.contains("`demo: error: `"),
            "NAME is the binary's: {page}"
        );
        let sub = std::fs::read_to_string(dir.path().join("man/demo-run.1")).unwrap();
        assert!(sub.contains("fast"), "{sub}");
        assert!(sub.contains("\\fBdemo\\fR(1)"), "{sub}");
        assert!(!dir.path().join("man/demo-secret.1").exists());
        assert!(!dir.path().join("man/demo-help.1").exists());
        for f in [
            "completions/demo",
            "completions/_demo",
            "completions/demo.fish",
        ] {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(text.contains("verbose"), "{f}: {text}");
            assert!(files.contains(&dir.path().join(f)));
        }
    }

    #[test]
    fn an_unwritable_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let err = write(demo(), CLIENT_EXIT_STATUS, &blocker).unwrap_err();
        assert!(err.to_string().contains("file/man"), "{err}");
    }

    #[test]
    fn roff_requests_are_escaped() {
        assert_eq!(roff_escape(".x"), "\\&.x");
        assert_eq!(roff_escape("a\\b"), "a\\eb");
    }
}
