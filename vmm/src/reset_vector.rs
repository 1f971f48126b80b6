//! A few bytes of "firmware" at the x86 reset vector. Linux on a hardware-reduced ACPI machine
//! without EFI reboots by jumping to the BIOS in real mode (0xf000:0xfff0). Tidal has no BIOS,
//! so a stub there writes the ACPI reset register, which ends the VM as any other reboot does.
//! Without it the guest would run into zeroed memory forever.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Where a real-mode CPU starts after reset: physical 0xffff0.
pub const RESET_VECTOR: u64 = 0xf_fff0;

/// Real-mode code: `mov al, value; mov dx, port; out dx, al; 1: hlt; jmp 1b`.
fn stub(port: u16, value: u8) -> [u8; 9] {
    let [port_lo, port_hi] = port.to_le_bytes();
    [0xb0, value, 0xba, port_lo, port_hi, 0xee, 0xf4, 0xeb, 0xfd]
}

pub fn write_reset_stub<M: GuestMemoryBackend>(
    mem: &M,
    port: u16,
    value: u8,
) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_slice(&stub(port, value), GuestAddress(RESET_VECTOR))
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    #[test]
    fn stub_fits_below_one_mib_and_encodes_the_port() {
        let code = stub(0x602, 1);
        assert!(RESET_VECTOR + code.len() as u64 <= 0x10_0000);
        assert_eq!(&code[..5], &[0xb0, 0x01, 0xba, 0x02, 0x06]);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_reset_stub(&mem, 0x602, 1).unwrap();
        let mut back = [0u8; 9];
        mem.read_slice(&mut back, GuestAddress(RESET_VECTOR))
            .unwrap();
        assert_eq!(back, code);
    }
}
