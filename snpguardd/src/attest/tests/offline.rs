//! The offline-unlock directive of a key release: present only in a
//! signed response whose request asked for it, the record's option as of
//! the release (`enrol` when allowed, `remove` when not), and covered by
//! the release signature under its own domain label.

use snpguard_protocol::attest::{
    release_message, unb64, verify_signature, AttestResponse, OfflineUnlock, SignatureError,
};

use super::*;

/// A release as the agent receives it, with what it checks it against.
struct Released {
    resp: AttestResponse,
    nonce: [u8; 32],
    report: Vec<u8>,
    sealed: Vec<u8>,
}

impl Released {
    /// The signature checked over the release message with directive `d`,
    /// as the agent checks it.
    fn verify(&self, d: Option<OfflineUnlock>) -> Result<(), SignatureError> {
        let message = release_message(
            &self.nonce,
            &self.report,
            &self.resp.record,
            &self.sealed,
            d,
        );
        verify_signature(&self.report, &message, self.resp.signature.as_ref())
    }
}

impl Fixture {
    /// Attests guest `g` with `signed` and `offline` as given; the key
    /// is released and opens.
    fn release(&self, g: &Guest<'_>, signed: bool, offline: bool) -> Released {
        let nonce = self.nonce();
        let (mut req, sk, report) = self.request(g, &nonce);
        req.signed = signed;
        req.offline = offline;
        let resp = self.attestor.attest(req, PEER).expect("released");
        let sealed = unb64(&resp.sealed_key, 4096).unwrap();
        let vmk = open_key(&sk, &report, &SealedBox::from_bytes(&sealed).unwrap()).unwrap();
        assert_eq!(vmk.as_slice(), VMK.as_slice());
        Released {
            resp,
            nonce,
            report,
            sealed,
        }
    }

    /// The directive a signed request asking for it gets now.
    fn directive(&self, g: &Guest<'_>) -> Option<OfflineUnlock> {
        let r = self.release(g, true, true);
        r.verify(r.resp.offline_unlock)
            .expect("the directive is signed");
        r.resp.offline_unlock
    }
}

/// An agent that does not ask (older, or without a chip-derived key)
/// gets the response it understands, whatever the record allows; an
/// unsigned response never carries a directive, asked for or not.
#[test]
fn the_directive_is_absent_unless_a_signed_request_asks_for_it() {
    let Some(f) = fixture() else { return };
    let g = f.guest();
    for allowed in [false, true] {
        f.registry.set_offline_unlock(&f.rec.id, allowed).unwrap();

        let signed = f.release(&g, true, false);
        assert_eq!(signed.resp.offline_unlock, None, "allowed={allowed}");
        signed
            .verify(None)
            .expect("the release message without a directive");
        for d in [OfflineUnlock::Enrol, OfflineUnlock::Remove] {
            assert_eq!(signed.verify(Some(d)), Err(SignatureError::Invalid));
        }

        for offline in [false, true] {
            let plain = f.release(&g, false, offline);
            assert_eq!(plain.resp.offline_unlock, None, "allowed={allowed}");
            assert_eq!(plain.resp.signature, None);
            let json = serde_json::to_string(&plain.resp).unwrap();
            assert!(!json.contains("offline"), "{json}");
        }
    }
}

/// `remove` for a record that does not allow offline unlock (the
/// default), `enrol` once it does, `remove` again once turned off: each
/// release carries the option as it is at that release.
#[test]
fn the_directive_follows_the_record_option() {
    let Some(f) = fixture() else { return };
    let g = f.guest();
    assert!(!f.rec.offline_unlock, "off by default");
    assert_eq!(f.directive(&g), Some(OfflineUnlock::Remove));
    f.registry.set_offline_unlock(&f.rec.id, true).unwrap();
    assert_eq!(f.directive(&g), Some(OfflineUnlock::Enrol));
    assert_eq!(f.directive(&g), Some(OfflineUnlock::Enrol));
    f.registry.set_offline_unlock(&f.rec.id, false).unwrap();
    assert_eq!(f.directive(&g), Some(OfflineUnlock::Remove));
    // Every one of them was a counted release.
    assert_eq!(f.counters(), (4, 0));
}

/// A record registered with the option gets `enrol` from its first
/// release.
#[test]
fn a_record_registered_with_offline_unlock_is_told_to_enrol() {
    let Some(f) = fixture() else { return };
    let mut req = register_request(&f.registry, f.dir.path(), "laptop", Some(min_tcb()), true)
        .expect("test data");
    req.allow_offline_unlock = true;
    let rec = f.registry.register(req).unwrap();
    assert!(rec.offline_unlock);
    let mut g = f.guest();
    g.measurement = arr(&rec.measurement);
    g.image_id = arr(&rec.image_id);
    g.id_key_digest = arr(&rec.id_key_digest);
    let r = f.release(&g, true, true);
    assert_eq!(r.resp.record, rec.id);
    assert_eq!(r.resp.offline_unlock, Some(OfflineUnlock::Enrol));
    // The first record was not changed by the second's option.
    assert_eq!(f.directive(&f.guest()), Some(OfflineUnlock::Remove));
}

/// The signature is over the message with the directive sent: it does
/// not verify without it (the old label) nor with the other directive,
/// so neither a stripped nor a swapped directive passes the agent.
#[test]
fn the_signature_covers_the_directive() {
    let Some(f) = fixture() else { return };
    let g = f.guest();
    for (allowed, sent, other) in [
        (true, OfflineUnlock::Enrol, OfflineUnlock::Remove),
        (false, OfflineUnlock::Remove, OfflineUnlock::Enrol),
    ] {
        f.registry.set_offline_unlock(&f.rec.id, allowed).unwrap();
        let r = f.release(&g, true, true);
        assert_eq!(r.resp.offline_unlock, Some(sent));
        r.verify(Some(sent))
            .expect("signed over the directive sent");
        assert_eq!(r.verify(None), Err(SignatureError::Invalid));
        assert_eq!(r.verify(Some(other)), Err(SignatureError::Invalid));
    }
}

/// A disabled record releases nothing, so it tells nothing either: the
/// refusal is the same as without the question.
#[test]
fn a_disabled_record_gives_no_directive() {
    let Some(f) = fixture() else { return };
    f.registry.set_offline_unlock(&f.rec.id, true).unwrap();
    f.registry.set_enabled(&f.rec.id, false).unwrap();
    let nonce = f.nonce();
    let (mut req, _, _) = f.request(&f.guest(), &nonce);
    req.offline = true;
    let err = f.attestor.attest(req, PEER).expect_err("disabled");
    assert_eq!((err.code, err.status), ("attestation-rejected", 403));
    assert_eq!(f.last_audit().result, "record-disabled");
}
