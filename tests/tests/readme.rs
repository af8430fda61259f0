//! The README is a newcomer's manual (issue 19 item 4): its links lead to files in the
//! repository, and the commands of "Publish, query, subscribe" and "Blobs" work when pasted
//! into a shell, both the curl ones and the CLI ones, against a real node. Commands are read from the README
//! itself, so an edit that breaks one fails here. The node listens on a free port rather than
//! the README's 4454 (tests run in parallel): `localhost:4454` is the one thing rewritten.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use shoal_tests::{shoal_bin, Node};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Relative link targets (`](target)`) of a markdown file, anchors dropped.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or("").trim();
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            out.push(target.to_string());
        }
        rest = &rest[end..];
    }
    out
}

#[test]
fn every_link_of_the_readme_and_docs_leads_to_a_file_in_the_repository() {
    let root = repo();
    let mut files = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    for dir in ["docs", "examples/pond-counter"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "md") {
                files.push(entry.path());
            }
        }
    }
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("shared/API.md") && !text.contains("shared/DESIGN.md"),
            "{} points outside the repository (shared/)",
            file.display()
        );
        for target in links(&text) {
            let path = file.parent().unwrap().join(&target);
            assert!(
                path.exists(),
                "{}: link to {target} leads nowhere",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} links found: is the reader broken?"
    );
}

/// The shell commands of the ```sh blocks in the README section `heading`, continuation lines
/// joined, comment lines dropped.
fn section_commands(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(&format!("## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section `{heading}`"));
    let section = &readme[start + heading.len() + 4..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in section.lines() {
        if line.starts_with("```") {
            in_block = line.trim() == "```sh";
            continue;
        }
        if !in_block || line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        // A trailing comment (after two spaces, as the README writes them) is not run.
        let line = line.split("  #").next().unwrap_or(line).trim_end();
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// Commands that run until interrupted: run for a while, then stopped.
fn runs_until_interrupted(command: &str) -> bool {
    command.contains("subscribe") || command.contains("--follow")
}

#[tokio::test]
async fn the_publish_and_blob_sections_work_as_pasted() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut commands = section_commands(&readme, "Publish, query, subscribe");
    let blobs = section_commands(&readme, "Blobs");
    assert!(blobs.len() >= 4, "{blobs:#?}");
    commands.extend(blobs);
    assert!(
        commands.iter().filter(|c| c.starts_with("curl")).count() >= 4
            && commands.iter().filter(|c| c.starts_with("shoal")).count() >= 6,
        "{commands:#?}"
    );
    let node = Node::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    // What `shoal blobs put manual.pdf` uploads.
    let manual: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(work.path().join("manual.pdf"), &manual).unwrap();
    // What `shoal events publish --file events.ndjson` reads.
    std::fs::write(
        work.path().join("events.ndjson"),
        "{\"semantics\":\"com.example.robot\",\"name\":\"robot2\",\"payload\":{\"n\":1}}\n",
    )
    .unwrap();
    let bin_dir = shoal_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let api = format!("127.0.0.1:{}", node.api.port());
    for command in &commands {
        // A template (`<source>`) is filled in; it may well select nothing here.
        let template = command.contains("<source>");
        let pasted = command
            .replace("localhost:4454", &api)
            .replace("<source>", &node.source);
        let long = runs_until_interrupted(command);
        let script = if long {
            format!("timeout 3 {pasted}; code=$?; [ $code = 124 ] || exit $code")
        } else {
            pasted.clone()
        };
        let out = tokio::task::spawn_blocking({
            let (dir, path, api) = (work.path().to_path_buf(), path.clone(), api.clone());
            move || {
                Command::new("bash")
                    .args(["-c", &script])
                    .current_dir(dir)
                    .env("PATH", path)
                    .env("SHOAL_NODE", format!("http://{api}"))
                    .stdin(Stdio::null())
                    .output()
            }
        })
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "`{command}` failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        // What must show: the published robot1 event wherever a read selects it, and some
        // answer from publishes, offsets and node info. Other reads may select nothing here
        // (blob names, a template's range, the console of a fresh node).
        let reads = command.contains("query") || command.contains("subscribe");
        let selects_robot1 = command.contains("robot1")
            || command.contains("com.example.robot")
            || command.contains("[{}]");
        if reads && selects_robot1 && !template {
            assert!(
                stdout.contains("robot1"),
                "`{command}` did not show robot1:\n{stdout}"
            );
        }
        if ["publish", "offsets", "node info", "blobs put", "blobs ls"]
            .iter()
            .any(|w| command.contains(w))
        {
            assert!(
                !stdout.trim().is_empty(),
                "`{command}` printed nothing\n{stderr}"
            );
        }
    }
    // The blob went up and came back down twice, byte for byte.
    for copy in ["manual-copy.pdf", "manual.pdf"] {
        assert_eq!(
            std::fs::read(work.path().join(copy)).unwrap(),
            manual,
            "{copy}"
        );
    }
}
