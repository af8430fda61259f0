//! App commands across the swarm (`--to SOURCE|all`): the desired state as events.
//!
//! Parties: the *commanding* node (any node; `?to=` on the apps and settings routes) records
//! a [`Command`] as an event of its own log; every node's *applier* (`applier.rs`) subscribes
//! to those events (local and replicated alike) and carries out the ones addressed to it
//! through its own app runtime, fetching a deployed package by its blob CID through the blob
//! service (from peers when not local). Because the command is an event, it reaches a target
//! that is partitioned or off when it is given as soon as replication does: after the heal.
//!
//! Event: semantics [`SEMANTICS`], name [`NAME`], tags [`TAG`] and `shoal.apps.to:<target>`
//! (`target` = a source id or `all`), payload = the [`Command`] JSON (`docs/format.md`, "App
//! commands"). Goals: carried out **once** per target, **the last command per app wins** in
//! `(lamport, source)` order, a bad command never stops the applier. Non-goals: consensus
//! (two nodes commanding one app at once: the later lamport wins, as for any event), undo.
//!
//! What a peer can lie about: anyone in the swarm may command (the swarm key is the trust
//! boundary, as for events); a command is parsed with bounded fields and a bad one is logged
//! and skipped. The package CID is checked by the blob service chunk by chunk, and the app
//! runtime validates the package as for a local deploy.
//!
//! Once: `applied.rs` persists, after each command, the highest offset applied per commanding
//! source and the `(lamport, source)` of the last command applied per app; a restarted node
//! resubscribes above those offsets, and a command older than the app's last one is skipped.
//! A crash between carrying out and recording repeats that one command after the restart;
//! every action is idempotent (deploying the same package, starting a running app).
//!
//! Files: `commander.rs` checks and records commands; `applier.rs` carries them out;
//! `applied.rs` is its persisted record; `report.rs` puts this node's apps (and the outcomes of
//! the commands it carried out) into its gossiped status, for `apps ls --all` and `nodes ls`.

pub mod applied;
pub mod applier;
pub mod commander;
pub mod report;

pub use commander::{Commander, GiveError, Given, GivenDeploy};

use serde::{Deserialize, Serialize};

/// Semantics of command events.
pub const SEMANTICS: &str = "shoal.apps";
/// Name of command events.
pub const NAME: &str = "command";
/// Tag every command event carries.
pub const TAG: &str = "shoal.apps.command";
/// Prefix of the tag that names the target.
pub const TO_PREFIX: &str = "shoal.apps.to:";
/// Longest app id, scope or CID a command may name.
const MAX_FIELD: usize = 256;

/// Who a command is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    Source(String),
}

impl Target {
    /// `all` or a source id.
    pub fn parse(s: &str) -> Result<Target, CommandError> {
        match s {
            "all" => Ok(Target::All),
            s if s.is_empty() || s.len() > MAX_FIELD => Err(CommandError::Field("to")),
            s => Ok(Target::Source(s.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Target::All => "all",
            Target::Source(s) => s,
        }
    }

    /// Whether the node `me` is targeted.
    pub fn includes(&self, me: &str) -> bool {
        match self {
            Target::All => true,
            Target::Source(s) => s == me,
        }
    }

    /// The tag naming this target.
    pub fn tag(&self) -> String {
        format!("{TO_PREFIX}{}", self.as_str())
    }
}

/// What a command asks of its targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Deploy the package blob `package` (and start it unless `start` is false).
    Deploy {
        app: String,
        version: String,
        package: String,
        #[serde(default = "yes")]
        start: bool,
    },
    Start {
        app: String,
    },
    Stop {
        app: String,
    },
    Restart {
        app: String,
    },
    Undeploy {
        app: String,
        #[serde(default)]
        purge: bool,
    },
    /// Settings of a scope (an app id or `node`).
    Settings {
        scope: String,
        settings: serde_json::Value,
    },
    UnsetSettings {
        scope: String,
    },
}

fn yes() -> bool {
    true
}

/// A command event's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// `all` or a source id (also in the event's tags, for filtering).
    pub to: String,
    #[serde(flatten)]
    pub action: Action,
}

/// Why a command event is not a command we carry out (logged and skipped).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("not an app command: {0}")]
    Json(#[source] serde_json::Error),
    #[error("app command field `{0}` is empty or too long")]
    Field(&'static str),
}

impl Action {
    /// The app (or settings scope) the action is about: the key "the last command wins" uses.
    pub fn subject(&self) -> &str {
        match self {
            Action::Deploy { app, .. }
            | Action::Start { app }
            | Action::Stop { app }
            | Action::Restart { app }
            | Action::Undeploy { app, .. } => app,
            Action::Settings { scope, .. } | Action::UnsetSettings { scope } => scope,
        }
    }

    /// The action's name as the payload's `action` field spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Deploy { .. } => "deploy",
            Action::Start { .. } => "start",
            Action::Stop { .. } => "stop",
            Action::Restart { .. } => "restart",
            Action::Undeploy { .. } => "undeploy",
            Action::Settings { .. } => "settings",
            Action::UnsetSettings { .. } => "unset-settings",
        }
    }

    /// Settings are their own subject: a settings command does not override a deploy of the
    /// app of the same name, nor the reverse.
    pub fn subject_key(&self) -> String {
        match self {
            Action::Settings { scope, .. } | Action::UnsetSettings { scope } => {
                format!("settings:{scope}")
            }
            other => format!("app:{}", other.subject()),
        }
    }
}

impl Command {
    /// Parses and bounds a command event's payload.
    pub fn parse(payload: &str) -> Result<Command, CommandError> {
        let command: Command = serde_json::from_str(payload).map_err(CommandError::Json)?;
        Target::parse(&command.to)?;
        let subject = command.action.subject();
        if subject.is_empty() || subject.len() > MAX_FIELD {
            return Err(CommandError::Field("app"));
        }
        if let Action::Deploy {
            package, version, ..
        } = &command.action
        {
            if package.is_empty() || package.len() > MAX_FIELD {
                return Err(CommandError::Field("package"));
            }
            if version.len() > MAX_FIELD {
                return Err(CommandError::Field("version"));
            }
        }
        Ok(command)
    }

    /// The event that records this command.
    pub fn to_event(&self) -> Result<crate::PublishEvent, CommandError> {
        let target = Target::parse(&self.to)?;
        let payload = serde_json::value::to_raw_value(self).map_err(CommandError::Json)?;
        Ok(crate::PublishEvent {
            semantics: SEMANTICS.into(),
            name: NAME.into(),
            tags: vec![TAG.into(), target.tag()],
            payload,
            timestamp: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_roundtrip_through_their_event() {
        let cmd = Command {
            to: "all".into(),
            action: Action::Deploy {
                app: "com.example.robot".into(),
                version: "1.0.0".into(),
                package: "bafkreia".into(),
                start: true,
            },
        };
        let event = cmd.to_event().unwrap();
        assert_eq!(event.tags, [TAG, "shoal.apps.to:all"]);
        let back = Command::parse(event.payload.get()).unwrap();
        assert_eq!(back, cmd);
        assert!(event.payload.get().contains(r#""action":"deploy""#));
    }

    #[test]
    fn defaults_and_bad_commands() {
        let c =
            Command::parse(r#"{"to":"x","action":"deploy","app":"a","version":"1","package":"p"}"#)
                .unwrap();
        assert!(matches!(c.action, Action::Deploy { start: true, .. }));
        for bad in [
            r#"{"to":"x","action":"explode","app":"a"}"#,
            r#"{"to":"","action":"start","app":"a"}"#,
            r#"{"to":"x","action":"start","app":""}"#,
            r#"{"to":"x","action":"deploy","app":"a","version":"1","package":""}"#,
            r#"[1,2]"#,
        ] {
            assert!(Command::parse(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(MAX_FIELD + 1);
        let cmd = format!(r#"{{"to":"x","action":"start","app":"{long}"}}"#);
        assert!(Command::parse(&cmd).is_err());
    }

    #[test]
    fn targets() {
        assert!(Target::parse("all").unwrap().includes("anyone"));
        let t = Target::parse("12D3KooA").unwrap();
        assert!(t.includes("12D3KooA") && !t.includes("12D3KooB"));
        assert_eq!(t.tag(), "shoal.apps.to:12D3KooA");
    }
}
