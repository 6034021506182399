//! The PVH boot protocol: the `hvm_start_info` block, its memory map and
//! module list, and finding the PVH entry point in an ELF vmlinux.
//!
//! PVH lets the VMM jump straight into the uncompressed kernel in 32-bit
//! protected mode, skipping the bzImage decompressor and real-mode setup;
//! this is why mvm boots an ELF `vmlinux`. The guest finds everything it
//! needs through one pointer (rbx = [`PVH_INFO_START`]).

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    EBDA_START, HIMEM_START, MEMMAP_MAX_ENTRIES, MEMMAP_START, MMIO_GAP_END, MMIO_GAP_START,
    MODLIST_START, PVH_INFO_START,
};

/// `hvm_start_info.magic` (Xen's XEN_HVM_START_MAGIC_VALUE).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// ELF note type of the 32-bit PVH entry (XEN_ELFNOTE_PHYS32_ENTRY).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;
/// Upper bound on the note segment bytes we are willing to read.
const MAX_NOTE_BYTES: u64 = 1 << 20;

/// Errors building the PVH boot information.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    #[error("writing the PVH {what} to guest memory at {addr:#x} failed: {source}")]
    Write {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("the memory map has {0} entries, more than the {MEMMAP_MAX_ENTRIES} that fit")]
    TooManyEntries(usize),
}

/// Why a kernel file is not a PVH-bootable ELF vmlinux.
#[derive(Debug, thiserror::Error)]
pub enum KernelImageError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("it looks like a compressed bzImage; mvm boots the uncompressed ELF vmlinux")]
    BzImage,
    #[error("it is not an ELF file")]
    NotElf,
    #[error("it is not a 64-bit little-endian x86_64 ELF")]
    WrongArch,
    #[error("its ELF program headers are malformed ({0})")]
    Malformed(&'static str),
    #[error("it has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY note; needs CONFIG_PVH=y)")]
    NoPvhNote,
}

/// Where the initrd sits in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    pub addr: u64,
    pub size: u64,
}

/// The memory map the guest sees: RAM below the EBDA, RAM from 1 MiB to
/// the MMIO gap (or the end of memory), and RAM above 4 GiB if any. The
/// EBDA and the legacy ROM area stay out of the map, so the kernel never
/// allocates over the MP table.
pub fn memory_map(mem_size: u64) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64| hvm_memmap_table_entry {
        addr,
        size,
        type_: E820_RAM,
        reserved: 0,
    };
    let mut map = vec![entry(0, EBDA_START)];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(entry(HIMEM_START, low_end - HIMEM_START));
    }
    if mem_size > MMIO_GAP_START {
        map.push(entry(MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    map
}

/// The start info block for a guest with `memmap_entries` map entries, a
/// command line at `cmdline_addr` and an optional initrd.
pub fn start_info(
    cmdline_addr: u64,
    memmap_entries: usize,
    initrd: Option<InitrdRegion>,
) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { MODLIST_START } else { 0 },
        cmdline_paddr: cmdline_addr,
        rsdp_paddr: 0,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap_entries as u32,
        reserved: 0,
    }
}

/// Write the start info, memory map and module list into guest memory.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline_addr: u64,
    initrd: Option<InitrdRegion>,
) -> Result<(), PvhError> {
    let map = memory_map(mem_size);
    if map.len() > MEMMAP_MAX_ENTRIES {
        return Err(PvhError::TooManyEntries(map.len()));
    }
    let write_err = |what, addr| move |source| PvhError::Write { what, addr, source };
    for (i, e) in map.iter().enumerate() {
        let addr = MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(*e, GuestAddress(addr))
            .map_err(write_err("memory map", addr))?;
    }
    if let Some(r) = initrd {
        let module = hvm_modlist_entry {
            paddr: r.addr,
            size: r.size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        mem.write_obj(module, GuestAddress(MODLIST_START))
            .map_err(write_err("module list", MODLIST_START))?;
    }
    let info = start_info(cmdline_addr, map.len(), initrd);
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(write_err("start info", PVH_INFO_START))?;
    Ok(())
}

/// Find the PVH entry point of an ELF vmlinux without loading it, so a
/// wrong kernel file is reported before any VM is created. Reads only the
/// headers and the note segments.
pub fn find_pvh_entry<F: Read + Seek>(f: &mut F) -> Result<u64, KernelImageError> {
    let mut ehdr = [0u8; 64];
    f.seek(SeekFrom::Start(0))?;
    let n = read_up_to(f, &mut ehdr)?;
    if n < 4 || &ehdr[..4] != b"\x7fELF" {
        // Every bzImage (with or without the EFI "MZ" stub) has "HdrS" at 0x202.
        let mut magic = [0u8; 4];
        if f.seek(SeekFrom::Start(0x202)).is_ok()
            && read_up_to(f, &mut magic)? == 4
            && &magic == b"HdrS"
        {
            return Err(KernelImageError::BzImage);
        }
        return Err(KernelImageError::NotElf);
    }
    if n < 64 {
        return Err(KernelImageError::Malformed("truncated ELF header"));
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little endian.
    if ehdr[4] != 2 || ehdr[5] != 1 || u16_at(&ehdr, 18) != EM_X86_64 {
        return Err(KernelImageError::WrongArch);
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54);
    let phnum = u16_at(&ehdr, 56);
    if phentsize != 56 {
        return Err(KernelImageError::Malformed("program header size is not 56"));
    }
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff.saturating_add(i * 56)))?;
        if read_up_to(f, &mut ph)? != ph.len() {
            return Err(KernelImageError::Malformed(
                "truncated program header table",
            ));
        }
        if u32_at(&ph, 0) != PT_NOTE {
            continue;
        }
        let (offset, filesz) = (u64_at(&ph, 8), u64_at(&ph, 32));
        if filesz > MAX_NOTE_BYTES {
            return Err(KernelImageError::Malformed("note segment too large"));
        }
        let mut notes = vec![0u8; filesz as usize];
        f.seek(SeekFrom::Start(offset))?;
        if read_up_to(f, &mut notes)? != notes.len() {
            return Err(KernelImageError::Malformed("truncated note segment"));
        }
        if let Some(entry) = pvh_entry_in_notes(&notes) {
            return Ok(entry);
        }
    }
    Err(KernelImageError::NoPvhNote)
}

/// The end (exclusive) of the kernel's loadable segments in guest physical
/// memory, `max(p_paddr + p_memsz)` over PT_LOAD headers, so the bss is
/// included: nothing (the initrd) may be placed below it.
pub fn load_end<F: Read + Seek>(f: &mut F) -> Result<u64, KernelImageError> {
    let mut ehdr = [0u8; 64];
    f.seek(SeekFrom::Start(0))?;
    if read_up_to(f, &mut ehdr)? != ehdr.len() || &ehdr[..4] != b"\x7fELF" {
        return Err(KernelImageError::NotElf);
    }
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().unwrap());
    let phnum = u16::from_le_bytes([ehdr[56], ehdr[57]]);
    let mut end = 0u64;
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff.saturating_add(i * 56)))?;
        if read_up_to(f, &mut ph)? != ph.len() {
            return Err(KernelImageError::Malformed(
                "truncated program header table",
            ));
        }
        if u32::from_le_bytes(ph[0..4].try_into().unwrap()) == PT_LOAD {
            let paddr = u64::from_le_bytes(ph[24..32].try_into().unwrap());
            let memsz = u64::from_le_bytes(ph[40..48].try_into().unwrap());
            end = end.max(paddr.saturating_add(memsz));
        }
    }
    Ok(end)
}

/// Walk a note segment looking for Xen's PHYS32_ENTRY note.
fn pvh_entry_in_notes(mut notes: &[u8]) -> Option<u64> {
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    while notes.len() >= 12 {
        let namesz = u32::from_le_bytes(notes[0..4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().ok()?) as usize;
        let ntype = u32::from_le_bytes(notes[8..12].try_into().ok()?);
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = name_end.checked_add(align4(descsz)?)?;
        if desc_end > notes.len() {
            return None;
        }
        let name = &notes[12..12 + namesz];
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" && descsz >= 4 {
            let desc = &notes[name_end..name_end + descsz];
            // The note holds a 32-bit physical address (sometimes padded to 8).
            return Some(u64::from(u32::from_le_bytes(desc[0..4].try_into().ok()?)));
        }
        notes = &notes[desc_end..];
    }
    None
}

/// `read` until `buf` is full or EOF; returns the byte count.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// A minimal x86_64 ELF with one PT_NOTE segment holding `notes`.
    pub(crate) fn fake_elf(notes: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut f[64..120];
        ph[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        f.extend_from_slice(notes);
        f
    }

    pub(crate) fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&ntype.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    pub(crate) fn pvh_elf() -> Vec<u8> {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x0100_0abcu32.to_le_bytes(),
        ));
        fake_elf(&notes)
    }

    #[test]
    fn finds_the_pvh_entry_after_other_notes() {
        assert_eq!(
            find_pvh_entry(&mut Cursor::new(pvh_elf())).unwrap(),
            0x0100_0abc
        );
    }

    #[test]
    fn rejects_kernels_without_pvh() {
        let no_pvh = fake_elf(&note(b"GNU\0", 3, &[0; 16]));
        assert!(matches!(
            find_pvh_entry(&mut Cursor::new(no_pvh)),
            Err(KernelImageError::NoPvhNote)
        ));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(matches!(
            find_pvh_entry(&mut Cursor::new(bz)),
            Err(KernelImageError::BzImage)
        ));
        assert!(matches!(
            find_pvh_entry(&mut Cursor::new(b"#!/bin/sh\n".to_vec())),
            Err(KernelImageError::NotElf)
        ));
        let mut elf32 = pvh_elf();
        elf32[4] = 1;
        assert!(matches!(
            find_pvh_entry(&mut Cursor::new(elf32)),
            Err(KernelImageError::WrongArch)
        ));
        // A note whose size runs past the segment is not trusted.
        let mut bad = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 4]);
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            find_pvh_entry(&mut Cursor::new(fake_elf(&bad))),
            Err(KernelImageError::NoPvhNote)
        ));
        let mut truncated = pvh_elf();
        truncated.truncate(100);
        assert!(find_pvh_entry(&mut Cursor::new(truncated)).is_err());
    }

    #[test]
    fn load_end_covers_the_bss() {
        let mut elf = pvh_elf();
        // Turn the note header into a PT_LOAD at 16 MiB, 1 MiB in memory.
        elf[64..68].copy_from_slice(&PT_LOAD.to_le_bytes());
        elf[64 + 24..64 + 32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        elf[64 + 40..64 + 48].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert_eq!(load_end(&mut Cursor::new(elf)).unwrap(), 0x110_0000);
        assert!(load_end(&mut Cursor::new(b"nope".to_vec())).is_err());
    }

    #[test]
    fn memory_map_covers_ram_and_skips_holes() {
        let map = memory_map(256 << 20);
        assert_eq!(map.len(), 2);
        assert_eq!((map[0].addr, map[0].size), (0, EBDA_START));
        assert_eq!(
            (map[1].addr, map[1].size),
            (HIMEM_START, (256 << 20) - HIMEM_START)
        );
        assert!(map.iter().all(|e| e.type_ == E820_RAM));

        let big = 5u64 << 30;
        let map = memory_map(big);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(
            (map[2].addr, map[2].size),
            (MMIO_GAP_END, big - MMIO_GAP_START)
        );
    }

    #[test]
    fn boot_info_lands_in_guest_memory() {
        let size = 64u64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let initrd = InitrdRegion {
            addr: 0x300_0000,
            size: 0x1234,
        };
        write_boot_info(&mem, size, 0x20000, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.cmdline_paddr, 0x20000);
        assert_eq!(info.memmap_entries, 2);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (initrd.addr, initrd.size));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(info.memmap_paddr + 24)).unwrap();
        assert_eq!((e.addr, e.size), (HIMEM_START, size - HIMEM_START));

        let info = start_info(0x20000, 2, None);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }
}
