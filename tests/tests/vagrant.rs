//! The Vagrant topology cannot boot here (no boxes can be downloaded), so this
//! checks what can be checked: the Vagrantfile parses as Ruby, and it defines
//! the four roles with the addresses the bench script uses.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::Path;
use std::process::Command;

fn vagrant_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../vagrant"))
}

#[test]
fn vagrantfile_is_valid_ruby() {
    let file = vagrant_dir().join("Vagrantfile");
    let out = Command::new("ruby")
        .arg("-c")
        .arg(&file)
        .output()
        .expect("ruby must be installed (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "ruby -c {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn vagrantfile_defines_the_four_roles_and_both_providers() {
    let text =
        std::fs::read_to_string(vagrant_dir().join("Vagrantfile")).expect("read Vagrantfile");
    for role in ["\"prod\"", "\"gwa\"", "\"gwb\"", "\"cons\""] {
        assert!(text.contains(role), "Vagrantfile lacks node {role}");
    }
    for provider in [":libvirt", ":virtualbox"] {
        assert!(
            text.contains(provider),
            "Vagrantfile lacks provider {provider}"
        );
    }
    let provision =
        std::fs::read_to_string(vagrant_dir().join("provision.sh")).expect("read provision.sh");
    let out = Command::new("bash")
        .arg("-n")
        .arg(vagrant_dir().join("provision.sh"))
        .output()
        .expect("bash -n");
    assert!(out.status.success(), "provision.sh has a syntax error");
    assert!(
        provision.contains("cargo xtask setup"),
        "provisioning must use the project's own setup"
    );
}
