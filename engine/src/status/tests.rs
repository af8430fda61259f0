use super::*;
use proptest::prelude::*;

fn status(apps: usize) -> NodeStatus {
    NodeStatus {
        display_name: Some("robot-cell-1".into()),
        version: "0.1.0".into(),
        uptime_secs: 12,
        events: 345,
        peers: vec![Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string()],
        apps_running: apps as u64,
        apps_deployed: apps as u64,
        apps: (0..apps)
            .map(|i| AppStatus {
                id: format!("com.example.app{i}"),
                version: "1.0.0".into(),
                kind: "process".into(),
                state: "running".into(),
                settings_valid: true,
                pid: Some(1000 + i as u32),
                restarts: 0,
                started_at: Some("2026-12-06T21:00:00Z".into()),
            })
            .collect(),
        commands: vec![],
    }
}

#[test]
fn roundtrip() {
    let key = Keypair::generate_ed25519();
    let signed = SignedStatus::sign(&key, 42, status(3)).unwrap();
    let back = SignedStatus::decode(&signed.encode()).unwrap();
    assert_eq!(back, signed);
    assert_eq!(back.source, key.public().to_peer_id());
    assert_eq!(back.status.apps.len(), 3);
}

#[test]
fn tampered_body_or_date_rejected() {
    let key = Keypair::generate_ed25519();
    let bytes = SignedStatus::sign(&key, 42, status(1)).unwrap().encode();
    // The `sentAt` field, then a byte inside the JSON body.
    let source_len = bytes[1] as usize;
    for at in [2 + source_len + 7, bytes.len() - 80] {
        let mut forged = bytes.clone();
        forged[at] ^= 1;
        assert!(
            SignedStatus::decode(&forged).is_err(),
            "byte {at} flipped and still accepted"
        );
    }
}

#[test]
fn status_signed_by_another_key_rejected() {
    let (real, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let signed = SignedStatus::sign(&other, 42, status(0)).unwrap();
    // Claim `real`'s source with `other`'s signature.
    let forged = SignedStatus {
        source: real.public().to_peer_id(),
        ..signed
    };
    assert!(matches!(
        SignedStatus::decode(&forged.encode()),
        Err(StatusError::BadSignature(_))
    ));
}

#[test]
fn large_status_sheds_its_lists_but_keeps_counts() {
    let key = Keypair::generate_ed25519();
    let signed = SignedStatus::sign(&key, 1, status(400)).unwrap();
    let bytes = signed.encode();
    assert!(bytes.len() <= MAX_STATUS, "{} bytes", bytes.len());
    let back = SignedStatus::decode(&bytes).unwrap();
    assert!(back.status.apps.is_empty());
    assert_eq!(back.status.apps_running, 400);
}

#[test]
fn oversized_message_rejected_before_parsing() {
    let junk = vec![1u8; MAX_STATUS + 1];
    assert!(matches!(
        SignedStatus::decode(&junk),
        Err(StatusError::TooLarge(_))
    ));
}

proptest! {
    #[test]
    fn junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SignedStatus::decode(&bytes);
    }

    #[test]
    fn truncations_never_panic(cut in 0usize..400) {
        let key = Keypair::generate_ed25519();
        let bytes = SignedStatus::sign(&key, 7, status(1)).unwrap().encode();
        let cut = cut.min(bytes.len().saturating_sub(1));
        prop_assert!(SignedStatus::decode(&bytes[..cut]).is_err());
    }
}
