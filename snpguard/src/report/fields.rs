//! Typed views of the report's bit fields: guest policy, platform info, key
//! info, TCB versions, firmware versions, CPUID.

use std::fmt;

use serde::Serialize;

/// The guest policy (ABI "GUEST_POLICY").
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// Bit 16: SMT allowed.
    pub const SMT: u64 = 1 << 16;
    /// Bit 17: reserved, must be one.
    pub const RESERVED_ONE: u64 = 1 << 17;
    /// Bit 18: association with a migration agent allowed.
    pub const MIGRATE_MA: u64 = 1 << 18;
    /// Bit 19: debugging allowed.
    pub const DEBUG: u64 = 1 << 19;
    const SINGLE_SOCKET: u64 = 1 << 20;
    const CXL_ALLOW: u64 = 1 << 21;
    const MEM_AES_256_XTS: u64 = 1 << 22;
    const RAPL_DIS: u64 = 1 << 23;
    const CIPHERTEXT_HIDING: u64 = 1 << 24;
    const PAGE_SWAP_DISABLE: u64 = 1 << 25;
    /// Bits 63:26 are reserved and must be zero.
    const RESERVED_MASK: u64 = !((1 << 26) - 1);

    /// The policy a launch is signed and started with: ABI minimum 0.0,
    /// the reserved bit 17 set, and the three switches an operator
    /// chooses (the daemon's `register` and `snpguardctl launch-config`).
    pub fn for_launch(allow_smt: bool, allow_debug: bool, allow_migrate_ma: bool) -> GuestPolicy {
        let mut p = Self::RESERVED_ONE;
        for (on, bit) in [
            (allow_smt, Self::SMT),
            (allow_debug, Self::DEBUG),
            (allow_migrate_ma, Self::MIGRATE_MA),
        ] {
            if on {
                p |= bit;
            }
        }
        GuestPolicy(p)
    }

    /// Minimum ABI minor version the guest requires.
    pub fn abi_minor(self) -> u8 {
        (self.0 & 0xff) as u8
    }
    /// Minimum ABI major version the guest requires.
    pub fn abi_major(self) -> u8 {
        ((self.0 >> 8) & 0xff) as u8
    }
    /// SMT is allowed.
    pub fn smt(self) -> bool {
        self.0 & Self::SMT != 0
    }
    /// Association with a migration agent is allowed.
    pub fn migrate_ma(self) -> bool {
        self.0 & Self::MIGRATE_MA != 0
    }
    /// Debugging (host access to guest memory) is allowed.
    pub fn debug(self) -> bool {
        self.0 & Self::DEBUG != 0
    }
    /// The guest may only run on a single-socket system.
    pub fn single_socket(self) -> bool {
        self.0 & Self::SINGLE_SOCKET != 0
    }
    /// CXL may be populated with guest memory.
    pub fn cxl_allow(self) -> bool {
        self.0 & Self::CXL_ALLOW != 0
    }
    /// AES-256-XTS memory encryption is required.
    pub fn mem_aes_256_xts(self) -> bool {
        self.0 & Self::MEM_AES_256_XTS != 0
    }
    /// Running Average Power Limit must be disabled.
    pub fn rapl_dis(self) -> bool {
        self.0 & Self::RAPL_DIS != 0
    }
    /// Ciphertext hiding must be enabled.
    pub fn ciphertext_hiding(self) -> bool {
        self.0 & Self::CIPHERTEXT_HIDING != 0
    }
    /// Guest page swapping is disabled.
    pub fn page_swap_disable(self) -> bool {
        self.0 & Self::PAGE_SWAP_DISABLE != 0
    }
    pub(crate) fn reserved_bit17(self) -> bool {
        self.0 & Self::RESERVED_ONE != 0
    }
    pub(crate) fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED_MASK
    }
}

impl fmt::Debug for GuestPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestPolicy({:#x})", self.0)
    }
}

/// Platform information (ABI "PLATFORM_INFO").
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PlatformInfo(pub u64);

impl PlatformInfo {
    /// SMT is enabled on the platform.
    pub fn smt_enabled(self) -> bool {
        self.0 & 1 != 0
    }
    /// Transparent SME is enabled.
    pub fn tsme_enabled(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// ECC memory is in use.
    pub fn ecc_enabled(self) -> bool {
        self.0 & (1 << 2) != 0
    }
    /// RAPL is disabled.
    pub fn rapl_disabled(self) -> bool {
        self.0 & (1 << 3) != 0
    }
    /// Ciphertext hiding is enabled.
    pub fn ciphertext_hiding_enabled(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// The alias check completed.
    pub fn alias_check_complete(self) -> bool {
        self.0 & (1 << 5) != 0
    }
}

impl fmt::Debug for PlatformInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlatformInfo({:#x})", self.0)
    }
}

/// Which key signed the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    /// The chip's Versioned Chip Endorsement Key.
    Vcek,
    /// A Versioned Loaded Endorsement Key (per cloud provider).
    Vlek,
    /// The report is not signed.
    None,
    /// A value the ABI reserves.
    Reserved(u8),
}

/// Key information (ABI "KEY_INFO" at 0x48).
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct KeyInfo(pub u32);

impl KeyInfo {
    /// The author key digest is valid (an author key signed the ID key).
    pub fn author_key_en(self) -> bool {
        self.0 & 1 != 0
    }
    /// MASK_CHIP_KEY: the firmware was configured not to sign with the
    /// chip key, so the signature field is zeros.
    pub fn mask_chip_key(self) -> bool {
        self.0 & 2 != 0
    }
    /// The key that signed the report.
    pub fn signing_key(self) -> SigningKey {
        match (self.0 >> 2) & 0x7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            n => SigningKey::Reserved(n as u8),
        }
    }
    pub(crate) fn reserved_bits(self) -> u32 {
        self.0 & !0x1f
    }
}

impl fmt::Debug for KeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyInfo({:#x})", self.0)
    }
}

/// How a product packs the SPL components into a TCB_VERSION.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcbLayout {
    /// Milan and Genoa: byte 0 boot loader, 1 TEE, 6 SNP, 7 microcode.
    MilanGenoa,
    /// Turin: byte 0 FMC, 1 boot loader, 2 TEE, 3 SNP, 7 microcode.
    Turin,
}

/// A raw TCB_VERSION; decode it with the product's [`TcbLayout`].
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tcb(pub u64);

impl fmt::Debug for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tcb({:#018x})", self.0)
    }
}

/// The security patch levels of a TCB, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcbParts {
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

impl Tcb {
    /// Decodes the components for a product's layout. Bytes the layout
    /// reserves are not part of any component.
    pub fn parts(self, layout: TcbLayout) -> TcbParts {
        let b = self.0.to_le_bytes();
        match layout {
            TcbLayout::MilanGenoa => TcbParts {
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
                fmc: None,
            },
            TcbLayout::Turin => TcbParts {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
        }
    }
}

impl TcbParts {
    /// Components as (name, value) pairs, in the order AMD lists them.
    pub fn components(&self) -> Vec<(&'static str, u8)> {
        let mut v = Vec::with_capacity(5);
        if let Some(fmc) = self.fmc {
            v.push(("fmc", fmc));
        }
        v.extend([
            ("bl", self.bootloader),
            ("tee", self.tee),
            ("snp", self.snp),
            ("ucode", self.microcode),
        ]);
        v
    }
}

impl fmt::Display for TcbParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .components()
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A firmware version (major.minor, build).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

impl FirmwareVersion {
    pub(crate) fn from_bytes(b: [u8; 4]) -> Self {
        FirmwareVersion {
            build: b[0],
            minor: b[1],
            major: b[2],
        }
    }
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// CPUID family, model and stepping of the chip (report version 3+).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cpuid {
    /// Combined family (base + extended).
    pub family: u8,
    /// Combined model.
    pub model: u8,
    /// Stepping.
    pub stepping: u8,
}
