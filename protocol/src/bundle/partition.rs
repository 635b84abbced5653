//! The LAUNCH_ARTIFACTS partition: an ext4 file system labelled
//! [`LABEL`] holding two slots, the directories [`SLOTS`], and the
//! symbolic link [`ACTIVE_LINK`] naming the active one. Each slot holds
//! one extracted bundle (the [`super::MEMBERS`], files of mode 0644).
//! A writer fills the inactive slot, then points the link at it with one
//! rename(2) of a new link named [`NEW_LINK`], so that a power cut leaves
//! either the old or the new launch active. `snpguardctl embed` writes it
//! from the host; the guest agent writes its own next launch.

use super::ExtractLimits;

/// File system label (and GPT partition name) of the partition.
pub const LABEL: &str = "LAUNCH_ARTIFACTS";
/// Size of a partition `snpguardctl embed` creates.
pub const PARTITION_BYTES: u64 = 512 << 20;
/// Limits on a bundle written into a slot (two slots share the partition).
pub const SLOT_LIMITS: ExtractLimits = ExtractLimits {
    max_member: 200 << 20,
    max_total: 240 << 20,
    max_config: 64 << 10,
};
/// The slot directories, at the partition's root.
pub const SLOTS: [&str; 2] = ["A", "B"];
/// The symbolic link naming the active slot (its target is `A` or `B`).
pub const ACTIVE_LINK: &str = "artifacts";
/// The new link a switch renames over [`ACTIVE_LINK`].
pub const NEW_LINK: &str = ".artifacts.new";

// Two full slots fit the partition.
const _: () = assert!(
    2 * SLOT_LIMITS.max_total < PARTITION_BYTES && SLOT_LIMITS.max_member <= SLOT_LIMITS.max_total
);

/// The slot a link target names, if it is one.
pub fn slot_named(target: &str) -> Option<&'static str> {
    SLOTS.into_iter().find(|s| *s == target)
}

/// The other slot.
pub fn other_slot(slot: &str) -> &'static str {
    if slot == SLOTS[0] {
        SLOTS[1]
    } else {
        SLOTS[0]
    }
}
