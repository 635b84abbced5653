//! Disk images through libguestfs: inspection of a guest, its kernels and
//! their SEV-SNP support, the filter of its kernel command line, the LUKS2
//! root volume and the data volumes, what happens to each mounted file
//! system (layout), the copy, and the changes convert makes inside the
//! guest. `convert` and `embed` drive these.

pub mod appliance;
pub mod cmdline;
pub mod copy;
pub mod guest;
pub mod inspect;
pub mod kernel;
pub mod layout;
pub mod luks;
pub mod sfdisk;
