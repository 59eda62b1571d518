//! A private apt configuration per Debian suite, used to download kernel packages without touching
//! the machine's own apt setup (its sources, lists, caches and pinning stay as they are).
//!
//! The mirror is the one the machine's own `/etc/apt/sources.list` or `sources.list.d/*` uses for
//! Debian (found by suite name), so no host name is written down here; `XTASK_VM_APT_MIRROR` (a
//! URI such as the one in a sources file) overrides it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::host;

/// Names that identify a Debian (not Ubuntu, not a third-party) archive entry.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// A Debian archive as the machine's sources name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    /// The `Signed-By` value to reuse (a keyring path, or an inline key block), if any.
    pub signed_by: Option<String>,
}

/// Find the machine's Debian mirror.
pub fn machine_mirror() -> Result<Mirror> {
    if let Ok(uri) = std::env::var("XTASK_VM_APT_MIRROR")
        && !uri.trim().is_empty()
    {
        return Ok(Mirror {
            uri: uri.trim().trim_end_matches('/').to_string(),
            signed_by: None,
        });
    }
    let mut files: Vec<PathBuf> = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let mut found = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => found.extend(parse_deb822(&text)),
            Some("list") => found.extend(parse_one_line(&text)),
            _ if f.file_name().is_some_and(|n| n == "sources.list") => {
                found.extend(parse_one_line(&text))
            }
            _ => {}
        }
    }
    found.into_iter().next().context(
        "no Debian archive found in /etc/apt/sources.list or /etc/apt/sources.list.d (need an \
         enabled `deb` entry for a Debian suite with component main); set XTASK_VM_APT_MIRROR",
    )
}

/// Is this (uri, suites, components) entry a plain Debian archive (not security, not updates)?
fn is_debian_entry(uri: &str, suites: &[&str], components: &[&str]) -> bool {
    !uri.starts_with("cdrom:")
        && components.contains(&"main")
        && suites.iter().any(|s| DEBIAN_SUITES.contains(s))
}

/// Parse one-line style entries: `deb [opt=val ...] uri suite component...`.
fn parse_one_line(text: &str) -> Vec<Mirror> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let (opts, rest) = if let Some(r) = rest.strip_prefix('[') {
            match r.split_once(']') {
                Some((o, r)) => (o, r),
                None => continue,
            }
        } else {
            ("", rest)
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() < 3 {
            continue;
        }
        let signed_by = opts
            .split_whitespace()
            .find_map(|o| {
                o.strip_prefix("signed-by=")
                    .or_else(|| o.strip_prefix("Signed-By="))
            })
            .map(str::to_string);
        if is_debian_entry(words[0], &words[1..2], &words[2..]) {
            out.push(Mirror {
                uri: words[0].trim_end_matches('/').to_string(),
                signed_by,
            });
        }
    }
    out
}

/// Parse deb822 style entries (`Types:`, `URIs:`, `Suites:`, `Components:`, `Signed-By:`).
fn parse_deb822(text: &str) -> Vec<Mirror> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        // field name -> value (continuation lines appended with '\n', as apt expects them)
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in para.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some((_, v)) = fields.last_mut() {
                    v.push('\n');
                    v.push_str(line);
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !get("types")
            .unwrap_or("")
            .split_whitespace()
            .any(|t| t == "deb")
        {
            continue;
        }
        let suites: Vec<&str> = get("suites").unwrap_or("").split_whitespace().collect();
        let comps: Vec<&str> = get("components").unwrap_or("").split_whitespace().collect();
        for uri in get("uris").unwrap_or("").split_whitespace() {
            if is_debian_entry(uri, &suites, &comps) {
                out.push(Mirror {
                    uri: uri.trim_end_matches('/').to_string(),
                    signed_by: get("signed-by").map(str::to_string),
                });
            }
        }
    }
    out
}

/// A private apt setup for one suite under `<cache>/apt/<suite>`.
pub struct PrivateApt {
    pub root: PathBuf,
    sources: PathBuf,
    lists: PathBuf,
    cache: PathBuf,
}

impl PrivateApt {
    /// Create (or reuse) the directories and write the sources file naming `suite`.
    pub fn new(cache_dir: &Path, suite: &str) -> Result<Self> {
        let root = cache_dir.join("apt").join(suite);
        let lists = root.join("lists");
        let cache = root.join("cache");
        for d in [
            lists.join("partial"),
            cache.join("archives").join("partial"),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mirror = machine_mirror()?;
        let mut text = format!(
            "Types: deb\nURIs: {}\nSuites: {suite}\nComponents: main\n",
            mirror.uri
        );
        if let Some(sb) = &mirror.signed_by {
            text.push_str(&format!("Signed-By: {sb}\n"));
        }
        let sources = root.join("private.sources");
        if std::fs::read_to_string(&sources).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&sources, &text)
                .with_context(|| format!("writing {}", sources.display()))?;
        }
        Ok(Self {
            root,
            sources,
            lists,
            cache,
        })
    }

    /// The `-o` options that point apt at the private state only.
    fn options(&self) -> Vec<String> {
        let mut o = vec![
            format!("Dir::Etc::sourcelist={}", self.sources.display()),
            "Dir::Etc::sourceparts=-".to_string(),
            format!("Dir::State::Lists={}", self.lists.display()),
            format!("Dir::Cache={}", self.cache.display()),
            // The machine's pinning must not influence which kernel we pick.
            "Dir::Etc::preferences=/dev/null".to_string(),
            "Dir::Etc::preferencesparts=-".to_string(),
            "APT::Architecture=amd64".to_string(),
            "APT::Architectures=amd64".to_string(),
            "Acquire::Languages=none".to_string(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_string(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_string(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_string(),
            "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false".to_string(),
            "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false".to_string(),
            "Acquire::Retries=3".to_string(),
        ];
        if host::is_root() {
            // Our private directories belong to root; don't drop to _apt for downloads.
            o.push("APT::Sandbox::User=root".to_string());
        }
        o.into_iter().flat_map(|v| ["-o".to_string(), v]).collect()
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(self.options()).arg("-q");
        c
    }

    /// `apt-get update` of the private lists.
    pub fn update(&self) -> Result<()> {
        host::run(self.cmd("apt-get").arg("update")).context("private apt-get update failed")?;
        Ok(())
    }

    /// The candidate version's control fields of a package (`apt-cache show --no-all-versions`).
    pub fn show(&self, pkg: &str) -> Result<Vec<(String, String)>> {
        let text =
            host::run_stdout(
                self.cmd("apt-cache")
                    .args(["show", "--no-all-versions", pkg]),
            )?;
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                break; // only the first stanza
            }
            if line.starts_with(' ') {
                if let Some((_, v)) = fields.last_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.to_string(), v.trim().to_string()));
            }
        }
        if fields.is_empty() {
            bail!("package {pkg} not found in the private lists");
        }
        Ok(fields)
    }

    /// Package names in the Depends field (alternatives flattened, version constraints dropped).
    pub fn depends(&self, pkg: &str) -> Result<Vec<String>> {
        let fields = self.show(pkg)?;
        let deps = fields
            .iter()
            .find(|(k, _)| k == "Depends")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        Ok(deps
            .split([',', '|'])
            .filter_map(|d| d.split_whitespace().next())
            .map(|d| d.split(':').next().unwrap_or(d).to_string())
            .collect())
    }

    pub fn version(&self, pkg: &str) -> Result<String> {
        let fields = self.show(pkg)?;
        fields
            .into_iter()
            .find(|(k, _)| k == "Version")
            .map(|(_, v)| v)
            .with_context(|| format!("{pkg} has no Version"))
    }

    /// `apt-get download` the packages into `dest`; returns the `.deb` paths in the same order.
    pub fn download(&self, pkgs: &[String], dest: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dest)?;
        let find = |pkg: &str| -> Option<PathBuf> {
            std::fs::read_dir(dest)
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
                })
        };
        let missing: Vec<&String> = pkgs.iter().filter(|p| find(p).is_none()).collect();
        if !missing.is_empty() {
            host::run(
                self.cmd("apt-get")
                    .arg("download")
                    .args(&missing)
                    .current_dir(dest),
            )
            .context("private apt-get download failed")?;
        }
        pkgs.iter()
            .map(|p| find(p).with_context(|| format!("apt-get download left no .deb for {p}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deb822_debian_entry_and_skips_security() {
        let text = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let m = parse_deb822(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].uri, "http://mirror.example/debian");
        assert_eq!(
            m[0].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
    }

    #[test]
    fn parses_one_line_entries() {
        let text = "# x\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ trixie main contrib\n\
                    deb http://m.example/debian-security trixie-security main\n\
                    deb https://other.example/apt cloud-sdk main\n";
        let m = parse_one_line(text);
        assert_eq!(
            m,
            vec![Mirror {
                uri: "http://m.example/debian".into(),
                signed_by: Some("/k.gpg".into())
            }]
        );
    }

    #[test]
    fn disabled_deb822_entry_is_ignored() {
        let text = "Enabled: no\nTypes: deb\nURIs: http://m.example/debian\nSuites: sid\nComponents: main\n";
        assert!(parse_deb822(text).is_empty());
    }
}
