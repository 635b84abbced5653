//! The registry's launch operations: adding a pending launch (blobs,
//! measurement, commit), approving one (the ID block signed with the
//! record's ID key), the signed parts of a launch, and writing the bundle
//! of a launch.

use std::io::Write;

use p384::ecdsa::SigningKey;
use snpguard::idblock::{IdAuth, IdBlock};
use snpguard::measure::LaunchDigest;
use snpguard_protocol::bundle::{self, BundleSources, LaunchConfig};

use super::launch::StoredLaunch;
use super::launch::{self, NewLaunch};
use super::record::{self, StoredRecord};
use super::{now, secret_key, secrets_err, store_err, Registry, MAX_INITRD, MAX_KERNEL};
use crate::secrets::Purpose;
use crate::service::{LaunchAdded, LaunchRequest, LaunchState, RecordInfo, ServiceError};
use crate::store::{Op, StoreError, Tree, CONFLICT_RETRIES};

/// What a launch bundle holds that the daemon signed.
#[derive(Debug, Clone)]
pub(crate) struct SignedLaunch {
    /// Its `launch-config.json`.
    pub config: LaunchConfig,
    /// `id-block.bin`.
    pub id_block: Vec<u8>,
    /// `id-auth.bin`.
    pub id_auth: Vec<u8>,
}

/// Longest origin text stored (`guest <IPv6 address>` fits easily).
const MAX_ORIGIN_LEN: usize = 128;

impl Registry {
    /// Stores the artifacts of `req`, measures them with the record's
    /// firmware, vCPUs and policy, and adds the launch as pending.
    pub(super) fn add_launch_from(
        &self,
        id: &str,
        mut req: LaunchRequest,
    ) -> Result<LaunchAdded, ServiceError> {
        record::check_id(id)?;
        record::check_cmdline(&req.cmdline)?;
        if req.origin.is_empty() || req.origin.len() > MAX_ORIGIN_LEN {
            return Err(ServiceError::InvalidInput(format!(
                "origin: must be 1 to {MAX_ORIGIN_LEN} bytes"
            )));
        }
        let rec = self.load(id)?;
        let vcpu_type = record::parse_vcpu_type(&rec.vcpu_type)?;
        let max_initrd = MAX_INITRD.min(bundle::ExtractLimits::default().max_member);
        let result = {
            let _gc = self.blob_gc.read().unwrap_or_else(|e| e.into_inner());
            (|| {
                let kernel = self.blobs.store("kernel", &mut req.kernel, MAX_KERNEL)?;
                if kernel.len == 0 {
                    return Err(ServiceError::InvalidInput(
                        "kernel: the file is empty; pass the guest's kernel image".into(),
                    ));
                }
                let initrd = self.blobs.store("initrd", &mut req.initrd, max_initrd)?;
                let digest = self.measure(
                    &rec.firmware,
                    &kernel,
                    &initrd,
                    &req.cmdline,
                    rec.vcpus,
                    vcpu_type,
                )?;
                let new = NewLaunch {
                    measurement: digest.to_string(),
                    kernel,
                    initrd,
                    cmdline: req.cmdline.clone(),
                    origin: req.origin.clone(),
                };
                let now = now()?;
                let measurement = new.measurement.clone();
                let mut added = None;
                let info = self.try_update(id, |r| {
                    added = Some(launch::add_pending(r, new.clone(), &now)?);
                    Ok(())
                })?;
                let (launch, created) = added.ok_or_else(|| {
                    ServiceError::Storage("adding the launch had no result".into())
                })?;
                Ok(LaunchAdded {
                    record: info,
                    launch: launch.to_string(),
                    measurement,
                    created,
                })
            })()
        };
        match result {
            Ok(added) if added.created => Ok(added),
            other => {
                // Blobs this attempt wrote and no launch uses (a refusal or
                // a duplicate); best effort, the next open collects them.
                let _ = self.collect_garbage();
                other
            }
        }
    }

    /// Approves launch `launch` of record `id`: signs an ID block for its
    /// measurement with the record's family and image id, policy, ID key
    /// and the daemon's author key.
    pub(super) fn approve(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError> {
        record::check_id(id)?;
        let _guard = self.lock_commit();
        let mut attempt = 0;
        loop {
            let (raw, mut rec) = self.load_raw(id)?;
            let i = launch::check_approvable(&rec, launch)?;
            let (id_block, id_auth) = self.sign(&rec, &rec.launches[i].measurement)?;
            launch::approve(&mut rec, i, id_block, id_auth, &now()?);
            crate::crash::point(crate::crash::points::APPROVE_SIGNED);
            match self.store.transaction(&[
                Op::expect(Tree::Records, id, Some(raw)),
                Op::put(Tree::Records, id, rec.to_json()?),
            ]) {
                Ok(()) => {}
                // Changed by another daemon meanwhile: approve what is
                // stored now (which may already be approved elsewhere).
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(store_err(e)),
            }
            crate::crash::point(crate::crash::points::APPROVE_COMMITTED);
            return Ok(rec.info());
        }
    }

    /// The ID block and ID auth (hex) of `measurement` for record `rec`.
    fn sign(
        &self,
        rec: &StoredRecord,
        measurement: &str,
    ) -> Result<(String, String), ServiceError> {
        let corrupt =
            |what: &str| ServiceError::Storage(format!("record {}: corrupt {what}", rec.id));
        let digest: LaunchDigest = measurement.parse().map_err(|_| corrupt("measurement"))?;
        let image_id: [u8; 16] = hex::decode(&rec.image_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| corrupt("image id"))?;
        let family_id: [u8; 16] = hex::decode(&rec.family_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| corrupt("family id"))?;
        let sealed = self
            .store
            .get(Tree::Secrets, &secret_key(Purpose::IdKey, &rec.id))
            .map_err(store_err)?
            .ok_or_else(|| ServiceError::Storage(format!("record {} has no ID key", rec.id)))?;
        let scalar = self
            .master
            .unseal(Purpose::IdKey, &rec.id, &sealed)
            .map_err(secrets_err)?;
        let id_key = SigningKey::from_slice(&scalar).map_err(|_| corrupt("ID key"))?;
        if hex::encode(snpguard::idblock::key_digest(id_key.verifying_key())) != rec.id_key_digest {
            return Err(corrupt("ID key (its digest differs from the record's)"));
        }
        let block = IdBlock {
            launch_digest: digest,
            family_id,
            image_id,
            guest_svn: 0,
            policy: rec.policy,
        };
        let auth = IdAuth::sign(&block, &id_key, Some(self.keys.author()))
            .map_err(|e| ServiceError::Storage(format!("signing the ID block: {e}")))?;
        Ok((hex::encode(block.to_bytes()), hex::encode(auth.as_bytes())))
    }

    /// The signed parts of launch `l` of `rec`: its launch config, ID
    /// block and ID auth block. A pending launch has no signed ID block.
    fn signed_parts(
        &self,
        rec: &StoredRecord,
        l: &StoredLaunch,
    ) -> Result<SignedLaunch, ServiceError> {
        let id = &rec.id;
        let corrupt = |what: &str| ServiceError::Storage(format!("record {id}: corrupt {what}"));
        let (Some(id_block), Some(id_auth)) = (&l.id_block, &l.id_auth) else {
            return Err(ServiceError::LaunchState(format!(
                "launch {} of record {id} is {}; approve it to get its bundle",
                l.id,
                LaunchState::Pending
            )));
        };
        let id_block = hex::decode(id_block).map_err(|_| corrupt("ID block"))?;
        let id_auth = hex::decode(id_auth).map_err(|_| corrupt("ID auth block"))?;
        let config = LaunchConfig {
            version: bundle::CONFIG_VERSION,
            name: rec.name.clone(),
            vcpus: rec.vcpus,
            vcpu_type: rec.vcpu_type.clone(),
            guest_policy: format!("{:#x}", rec.policy),
            guest_features: format!("{:#x}", rec.guest_features),
            measurement: l.measurement.clone(),
            id_key_digest: rec.id_key_digest.clone(),
            author_key_digest: rec.author_key_digest.clone(),
            family_id: rec.family_id.clone(),
            image_id: rec.image_id.clone(),
            kernel_hashes: true,
            no_encryption: false,
        };
        Ok(SignedLaunch {
            config,
            id_block,
            id_auth,
        })
    }

    /// The signed parts of the *approved* launch `launch` of record `id`,
    /// for a guest of that record writing its own next launch: a pending
    /// or retired launch is refused ([`ServiceError::LaunchState`]), an
    /// unknown one is [`ServiceError::NotFound`].
    pub(crate) fn signed_launch(
        &self,
        id: &str,
        launch: &str,
    ) -> Result<SignedLaunch, ServiceError> {
        let rec = self.load(id)?;
        let l = rec.launch(launch)?;
        if l.state != LaunchState::Approved {
            return Err(ServiceError::LaunchState(format!(
                "launch {} of record {id} is {}",
                l.id, l.state
            )));
        }
        self.signed_parts(&rec, l)
    }

    /// Writes launch-artifacts.tar.gz of launch `launch` (default: the
    /// newest approved) of `rec`. A pending launch has no signed ID block
    /// and no bundle.
    pub(super) fn write_bundle(
        &self,
        rec: &StoredRecord,
        launch: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<(), ServiceError> {
        let id = &rec.id;
        let l = match launch {
            Some(l) => rec.launch(l)?,
            None => rec.newest_approved().ok_or_else(|| {
                ServiceError::LaunchState(format!("record {id} has no approved launch"))
            })?,
        };
        let SignedLaunch {
            config,
            id_block,
            id_auth,
        } = self.signed_parts(rec, l)?;
        let mut firmware = self.blobs.open_blob(&rec.firmware)?;
        let mut kernel = self.blobs.open_blob(&l.kernel)?;
        let mut initrd = self.blobs.open_blob(&l.initrd)?;
        let src = BundleSources {
            firmware: &mut firmware,
            firmware_len: rec.firmware.len,
            kernel: &mut kernel,
            kernel_len: l.kernel.len,
            initrd: &mut initrd,
            initrd_len: l.initrd.len,
            cmdline: &l.cmdline,
            id_block: &id_block,
            id_auth: &id_auth,
        };
        bundle::write_bundle(out, &config, src)
            .map_err(|e| ServiceError::Storage(format!("writing the bundle of {id}: {e}")))
    }
}
