//! A raw ARP prober (AF_PACKET): one who-has request, then every reply collected for a short
//! window, so a test can see whether two hosts answer for one address at once. `arping` only
//! takes whole seconds for its timeouts, too coarse for sampling every 50 ms.
//!
//! Create the prober on a thread that is inside the namespace whose interface it uses
//! ([`crate::netns::Netns::enter_current_thread`]).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const ETH_P_ARP: u16 = 0x0806;

pub struct ArpProber {
    fd: i32,
    ifindex: i32,
    mac: [u8; 6],
    src: Ipv4Addr,
}

fn os(what: &str) -> Error {
    Error::io(what, std::io::Error::last_os_error())
}

impl ArpProber {
    pub fn new(ifname: &str, src: Ipv4Addr) -> Result<ArpProber> {
        // SAFETY: plain syscalls on values owned here; buffers are sized by their types.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (ETH_P_ARP.to_be()) as i32);
            if fd < 0 {
                return Err(os("socket(AF_PACKET)"));
            }
            let name = std::ffi::CString::new(ifname).map_err(|_| Error::Invalid(ifname.into()))?;
            let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            if ifindex == 0 {
                libc::close(fd);
                return Err(os(ifname));
            }
            let mut req: libc::ifreq = std::mem::zeroed();
            for (i, b) in ifname.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
                req.ifr_name[i] = b as libc::c_char;
            }
            if libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) < 0 {
                libc::close(fd);
                return Err(os("SIOCGIFHWADDR"));
            }
            let mut mac = [0u8; 6];
            for (i, m) in mac.iter_mut().enumerate() {
                *m = req.ifr_ifru.ifru_hwaddr.sa_data[i] as u8;
            }
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ARP.to_be();
            sll.sll_ifindex = ifindex;
            if libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) < 0
            {
                libc::close(fd);
                return Err(os("bind(AF_PACKET)"));
            }
            Ok(ArpProber {
                fd,
                ifindex,
                mac,
                src,
            })
        }
    }

    /// Asks who has `target` and returns the distinct MACs that answered within `wait`.
    pub fn probe(&self, target: Ipv4Addr, wait: Duration) -> Result<Vec<[u8; 6]>> {
        let mut f = [0u8; 42];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&self.mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&self.mac);
        f[28..32].copy_from_slice(&self.src.octets());
        f[38..42].copy_from_slice(&target.octets());
        // SAFETY: see `new`; the frame and receive buffers outlive the calls.
        unsafe {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = ETH_P_ARP.to_be();
            to.sll_ifindex = self.ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let n = libc::sendto(
                self.fd,
                f.as_ptr() as *const libc::c_void,
                f.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if n < 0 {
                return Err(os("sendto(ARP)"));
            }
            let end = Instant::now() + wait;
            let mut macs: Vec<[u8; 6]> = Vec::new();
            let mut buf = [0u8; 1600];
            loop {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut pfd = libc::pollfd {
                    fd: self.fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                if libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) <= 0 {
                    continue;
                }
                let n = libc::recv(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                if n < 42 {
                    continue;
                }
                let b = &buf[..n as usize];
                let is_reply = b[12..14] == ETH_P_ARP.to_be_bytes() && b[20..22] == [0, 2];
                if is_reply && b[28..32] == target.octets() {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(&b[22..28]);
                    if !macs.contains(&m) {
                        macs.push(m);
                    }
                }
            }
            Ok(macs)
        }
    }
}

impl Drop for ArpProber {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this prober.
        unsafe {
            libc::close(self.fd);
        }
    }
}
