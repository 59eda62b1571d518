//! Download a Debian kernel package and extract what the VM needs: `vmlinuz` and the requested
//! modules plus their `modinfo -F depends` closure, decompressed (busybox insmod cannot read
//! `.ko.xz`/`.ko.zst`), in load order.
//!
//! Package layouts seen so far: bookworm's 6.1 ships everything in `linux-image-<abi>-amd64` with
//! modules under `lib/modules`; trixie's 6.12 uses `usr/lib/modules` and `.ko.xz`; sid's 7.x
//! splits the kernel into `linux-binary-*` (`usr/lib/modules/<rel>/vmlinuz`), `linux-modules-*`
//! and `linux-base-*` (`modules.builtin`), `linux-image-*` being only a meta package.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::apt::PrivateApt;
use super::{KernelSpec, PreparedKernel, host, initramfs};

const MANIFEST: &str = "kernel.txt";

/// Make `spec`'s kernel ready to boot under `cache_dir/kernels/<name>`, downloading and extracting
/// it on the first call; later calls only read the manifest (no network).
pub fn prepare_kernel(spec: &KernelSpec, cache_dir: &Path) -> Result<PreparedKernel> {
    let kernels = cache_dir.join("kernels");
    let dir = kernels.join(spec.name);
    if let Some(k) = load_manifest(spec, &dir)? {
        return Ok(k);
    }
    let started = Instant::now();
    std::fs::create_dir_all(&kernels)?;
    if dir.exists() {
        // Incomplete or for another suite: start over.
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing stale {}", dir.display()))?;
    }
    let tmp = kernels.join(format!(".{}.tmp-{}", spec.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = build(spec, cache_dir, &tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("preparing kernel {} ({})", spec.name, spec.suite)));
    }
    // Publish atomically; if another process won the race, keep its copy.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let k = load_manifest(spec, &dir)?.context("prepared kernel has no manifest")?;
    eprintln!(
        "vm: prepared kernel {} ({}, {}) in {:.1} s",
        spec.name,
        k.release,
        k.packages.join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(k)
}

fn build(spec: &KernelSpec, cache_dir: &Path, out: &Path) -> Result<()> {
    for t in ["apt-get", "apt-cache", "dpkg-deb", "modinfo"] {
        host::tool(t)?;
    }
    let busybox = host::static_busybox()?;

    // 1. Resolve and download the packages through the private apt configuration.
    let apt = PrivateApt::new(cache_dir, spec.suite)?;
    apt.update()?;
    let image = apt
        .depends(spec.meta_package)?
        .into_iter()
        .find(|d| d.starts_with("linux-image-") && d != spec.meta_package)
        .with_context(|| {
            format!(
                "{} ({}) depends on no linux-image-* package",
                spec.meta_package, spec.suite
            )
        })?;
    // "linux-image-6.1.0-50-amd64" -> "6.1.0-50-amd64"; split packages share that suffix.
    let flavour = image.trim_start_matches("linux-image-").to_string();
    let split: Vec<String> = apt
        .depends(&image)?
        .into_iter()
        .filter(|d| {
            ["linux-binary-", "linux-modules-", "linux-base-"]
                .iter()
                .any(|p| d.strip_prefix(p) == Some(flavour.as_str()))
        })
        .collect();
    let mut pkgs = vec![image.clone()];
    pkgs.extend(split);
    let mut versioned = Vec::new();
    for p in &pkgs {
        versioned.push(format!("{p}={}", apt.version(p)?));
    }
    let debs_dir = apt.root.join("debs");
    let debs = apt.download(&pkgs, &debs_dir)?;

    // 2. Extract them all into one staging tree.
    let staging = apt.root.join(format!("staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let res = (|| -> Result<()> {
        for deb in &debs {
            host::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&staging))?;
        }
        extract(spec, &staging, out, &versioned, &busybox)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    res?;
    // The kernel is prepared: the .debs are no longer needed (they are 70-125 MB each).
    let _ = std::fs::remove_dir_all(&debs_dir);
    Ok(())
}

fn extract(
    spec: &KernelSpec,
    staging: &Path,
    out: &Path,
    packages: &[String],
    busybox: &Path,
) -> Result<()> {
    // The modules directory: lib/modules/<rel> (bookworm) or usr/lib/modules/<rel> (trixie on).
    let mut mod_dirs = Vec::new();
    for base in ["lib/modules", "usr/lib/modules"] {
        if let Ok(rd) = std::fs::read_dir(staging.join(base)) {
            mod_dirs.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.join("kernel").is_dir()),
            );
        }
    }
    let [mod_dir] = mod_dirs.as_slice() else {
        bail!("expected exactly one modules directory in the package(s), found {mod_dirs:?}");
    };
    let release = mod_dir
        .file_name()
        .with_context(|| format!("modules directory {} has no name", mod_dir.display()))?
        .to_string_lossy()
        .into_owned();
    if !release.starts_with(spec.release_prefix) {
        bail!(
            "suite {} now ships kernel {release}, not {}*: update the KernelSpec",
            spec.suite,
            spec.release_prefix
        );
    }
    // vmlinuz: boot/vmlinuz-<rel> (up to 6.12) or usr/lib/modules/<rel>/vmlinuz (sid's 7.x).
    let vmlinuz_src = [
        staging.join("boot").join(format!("vmlinuz-{release}")),
        mod_dir.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| format!("no vmlinuz for {release} in the package(s)"))?;

    // Index every module file by its normalised name; read modules.builtin.
    let mut index: BTreeMap<String, PathBuf> = BTreeMap::new();
    walk(&mod_dir.join("kernel"), &mut |p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(stem) = name.split(".ko").next().filter(|_| name.contains(".ko")) {
            index.insert(host::module_key(stem), p.to_path_buf());
        }
    })?;
    let builtin_list = std::fs::read_to_string(mod_dir.join("modules.builtin")).unwrap_or_default();
    let builtin_set: BTreeSet<String> = builtin_list
        .lines()
        .filter_map(|l| {
            Path::new(l)
                .file_name()?
                .to_str()?
                .split(".ko")
                .next()
                .map(host::module_key)
        })
        .collect();
    if builtin_set.is_empty() {
        eprintln!(
            "vm: warning: {release} ships no modules.builtin; unknown modules will be an error"
        );
    }

    let modules_out = out.join("modules");
    std::fs::create_dir_all(&modules_out)?;
    let mut order: Vec<PathBuf> = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut builtin: Vec<String> = Vec::new();
    for want in spec.modules {
        let key = host::module_key(want);
        if index.contains_key(&key) {
            add_module(
                &key,
                &index,
                &builtin_set,
                &modules_out,
                &mut done,
                &mut Vec::new(),
                &mut order,
            )?;
        } else if builtin_set.contains(&key) {
            builtin.push(want.to_string());
        } else {
            bail!("module {want} is neither a module file nor built into {release}");
        }
    }

    let vmlinuz = out.join("vmlinuz");
    std::fs::copy(&vmlinuz_src, &vmlinuz)?;
    let base = out.join("base.cpio");
    initramfs::write_base(&base, busybox, &order)?;

    let rel = |p: &Path| p.strip_prefix(out).unwrap_or(p).display().to_string();
    let mut m = String::new();
    m.push_str("# written by xtask vm; delete this directory to prepare the kernel again\n");
    m.push_str(&format!(
        "name={}\nsuite={}\nrelease={release}\n",
        spec.name, spec.suite
    ));
    for p in packages {
        m.push_str(&format!("package={p}\n"));
    }
    for p in &order {
        m.push_str(&format!("module={}\n", rel(p)));
    }
    for b in &builtin {
        m.push_str(&format!("builtin={b}\n"));
    }
    std::fs::write(out.join(MANIFEST), m)?;
    Ok(())
}

/// Decompress `key`'s module (after its dependencies) into `out`, appending to `order`.
fn add_module(
    key: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    out: &Path,
    done: &mut BTreeSet<String>,
    stack: &mut Vec<String>,
    order: &mut Vec<PathBuf>,
) -> Result<()> {
    if done.contains(key) || builtin.contains(key) && !index.contains_key(key) {
        return Ok(());
    }
    if stack.iter().any(|s| s == key) {
        bail!("module dependency cycle: {} -> {key}", stack.join(" -> "));
    }
    let src = index
        .get(key)
        .with_context(|| format!("dependency {key} not found among the modules"))?;
    let dst = out.join(format!("{key}.ko"));
    decompress(src, &dst)?;
    let deps = host::run_stdout(Command::new("modinfo").args(["-F", "depends"]).arg(&dst))?;
    stack.push(key.to_string());
    for dep in deps
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        add_module(
            &host::module_key(dep),
            index,
            builtin,
            out,
            done,
            stack,
            order,
        )?;
    }
    stack.pop();
    done.insert(key.to_string());
    order.push(dst);
    Ok(())
}

fn decompress(src: &Path, dst: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        std::fs::copy(src, dst)?;
        return Ok(());
    } else if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        bail!("unknown module compression: {name}");
    };
    let status = Command::new(host::tool(tool)?)
        .args(["-d", "-c"])
        .arg(src)
        .stdin(Stdio::null())
        .stdout(File::create(dst)?)
        .status()
        .with_context(|| format!("running {tool}"))?;
    if !status.success() {
        bail!("{tool} -d {name} failed ({status})");
    }
    Ok(())
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&e.path(), f)?;
        } else if ft.is_file() {
            f(&e.path());
        }
    }
    Ok(())
}

/// Read a prepared kernel's manifest; `None` if the kernel is not (completely) prepared.
fn load_manifest(spec: &KernelSpec, dir: &Path) -> Result<Option<PreparedKernel>> {
    let Ok(text) = std::fs::read_to_string(dir.join(MANIFEST)) else {
        return Ok(None);
    };
    let mut k = PreparedKernel {
        spec: *spec,
        dir: dir.to_path_buf(),
        vmlinuz: dir.join("vmlinuz"),
        release: String::new(),
        packages: Vec::new(),
        modules: Vec::new(),
        builtin: Vec::new(),
        base_initramfs: dir.join("base.cpio"),
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, v)) = line.split_once('=') else {
            continue;
        };
        match key {
            "release" => k.release = v.to_string(),
            "package" => k.packages.push(v.to_string()),
            "module" => k.modules.push(dir.join(v)),
            "builtin" => k.builtin.push(v.to_string()),
            "suite" if v != spec.suite => return Ok(None),
            _ => {}
        }
    }
    let complete = !k.release.is_empty()
        && k.vmlinuz.is_file()
        && k.base_initramfs.is_file()
        && k.modules.iter().all(|m| m.is_file());
    Ok(complete.then_some(k))
}
