//! `rtds-sim`: a small Modbus TCP server that behaves like a PLC, for the
//! demo (`make run`), the tests and the benchmarks. It shares RTDS's codec
//! but none of its client code, and the tests cross-check it with an
//! independent client.
//!
//! Register map (protocol addresses, 0-based; see README):
//!
//! | address     | type       | value |
//! |-------------|------------|-------|
//! | hr:0        | u16        | seconds since start (counter) |
//! | hr:1        | i16        | triangle wave −100…100, period 40 s |
//! | hr:2–3      | u32 ABCD   | tenths of a second since start |
//! | hr:10–11    | f32 ABCD   | sine 50 ± 50, period 60 s |
//! | hr:12–13    | f32 ABCD   | ramp 0…100 over 100 s |
//! | hr:100–199  | u16        | plain memory, 0 at start (setpoints) |
//! | hr:200      | u16        | 4660 (0x1234) |
//! | hr:201      | i16        | −2 |
//! | hr:202–203  | u32 ABCD   | 305419896 (0x12345678) |
//! | hr:204–205  | i32 ABCD   | −123456 |
//! | hr:206–207  | f32 ABCD   | 123.5 |
//! | hr:208–209  | f32 CDAB   | 123.5 |
//! | hr:210–213  | f64 ABCD   | −1.25 |
//! | hr:214–217  | string     | "RTDS-SIM" |
//! | ir:0        | u16        | same counter as hr:0 |
//! | ir:1–2      | f32 ABCD   | temperature 20 ± 5, period 120 s |
//! | co:0        | bool       | toggles every second |
//! | co:1–7      | bool       | 1 0 1 1 0 0 1 |
//! | co:100–199  | bool       | plain memory |
//! | di:0–7      | bool       | 1 1 0 0 1 0 1 0 |
//!
//! Every other address reads 0 and accepts writes, except the ranges given
//! with `--hole`, which answer exception 2 (illegal data address).
//!
//! With `--changing` (the benchmarks' and the recorded run's device) the map
//! above is replaced: holding and input register `a` starts at
//! `0x4000 + (a × 37 mod 1024)` and every read request adds 1 to each
//! register it reads (wrapping), so every tag changes on every read, the
//! same way on every run (one client). An f32 or f64 whose first word is
//! such a register stays finite and normal (2 … 2¹⁶ or so) for the first
//! 15,000 reads; the time-driven values stand still.

use rtds::connector::modbus::codec::{Exception, Frame, Request, Response};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: rtds-sim [--bind ADDR] [--port N] [--hole TABLE:FIRST-LAST]... [--max-clients N] [--log-requests]

  --bind ADDR        address to listen on (default 127.0.0.1)
  --port N           TCP port (default 5020; 0 picks a free one)
  --hole T:A-B       addresses A..=B of table T (hr, ir, co, di) answer exception 2
  --max-clients N    refuse connections beyond N at once (a one-client device: 1)
  --log-requests     print every request to stderr
  --delay-ms N       answer every request N ms late (a slow device or link)
  --changing         every register read changes on every read (see the docs)
The first line on stdout is `rtds-sim listening on ADDR:PORT`.
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Table {
    Coil,
    Discrete,
    Input,
    Holding,
}

struct Bank {
    hr: Vec<u16>,
    ir: Vec<u16>,
    co: Vec<bool>,
    di: Vec<bool>,
    holes: Vec<(Table, u16, u16)>,
    /// `--changing`: reads add 1 to the registers they read.
    changing: bool,
}

fn f32_words(v: f32) -> [u16; 2] {
    let b = v.to_be_bytes();
    [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ]
}

impl Bank {
    fn new(holes: Vec<(Table, u16, u16)>) -> Bank {
        let mut b = Bank {
            hr: vec![0; 65536],
            ir: vec![0; 65536],
            co: vec![false; 65536],
            di: vec![false; 65536],
            holes,
            changing: false,
        };
        b.hr[200] = 0x1234;
        b.hr[201] = (-2i16) as u16;
        b.hr[202..204].copy_from_slice(&[0x1234, 0x5678]);
        let i = (-123_456i32).to_be_bytes();
        b.hr[204..206].copy_from_slice(&[
            u16::from_be_bytes([i[0], i[1]]),
            u16::from_be_bytes([i[2], i[3]]),
        ]);
        b.hr[206..208].copy_from_slice(&f32_words(123.5));
        let [hi, lo] = f32_words(123.5);
        b.hr[208..210].copy_from_slice(&[lo, hi]);
        let d = (-1.25f64).to_be_bytes();
        for k in 0..4 {
            b.hr[210 + k] = u16::from_be_bytes([d[2 * k], d[2 * k + 1]]);
        }
        for (k, pair) in b"RTDS-SIM".chunks(2).enumerate() {
            b.hr[214 + k] = u16::from_be_bytes([pair[0], pair[1]]);
        }
        for (k, v) in [true, false, true, true, false, false, true]
            .into_iter()
            .enumerate()
        {
            b.co[1 + k] = v;
        }
        for (k, v) in [true, true, false, false, true, false, true, false]
            .into_iter()
            .enumerate()
        {
            b.di[k] = v;
        }
        b
    }

    /// The `--changing` map: every register a known, finite start.
    fn changing(holes: Vec<(Table, u16, u16)>) -> Bank {
        let mut b = Bank::new(holes);
        for (a, (h, i)) in b.hr.iter_mut().zip(b.ir.iter_mut()).enumerate() {
            let v = 0x4000 + (a * 37 % 1024) as u16;
            (*h, *i) = (v, v);
        }
        b.changing = true;
        b
    }

    /// Moves the live values to time `t` (seconds since start).
    fn tick(&mut self, t: f64) {
        use std::f64::consts::PI;
        if self.changing {
            return;
        }
        let secs = t as u64;
        self.hr[0] = (secs % 65536) as u16;
        self.ir[0] = self.hr[0];
        let phase = (t % 40.0) / 40.0;
        let tri = if phase < 0.5 {
            -100.0 + 400.0 * phase
        } else {
            300.0 - 400.0 * phase
        };
        self.hr[1] = (tri.round() as i16) as u16;
        let tenths = ((t * 10.0) as u64 % (1 << 32)) as u32;
        self.hr[2] = (tenths >> 16) as u16;
        self.hr[3] = tenths as u16;
        self.hr[10..12].copy_from_slice(&f32_words(
            (50.0 + 50.0 * (2.0 * PI * t / 60.0).sin()) as f32,
        ));
        self.hr[12..14].copy_from_slice(&f32_words((t % 100.0) as f32));
        self.ir[1..3].copy_from_slice(&f32_words(
            (20.0 + 5.0 * (2.0 * PI * t / 120.0).sin()) as f32,
        ));
        self.co[0] = secs.is_multiple_of(2);
    }

    fn in_hole(&self, table: Table, addr: u16, count: u16) -> bool {
        let (a, b) = (u32::from(addr), u32::from(addr) + u32::from(count) - 1);
        self.holes
            .iter()
            .any(|&(t, first, last)| t == table && a <= u32::from(last) && b >= u32::from(first))
    }

    fn handle(&mut self, req: &Request) -> Response {
        let range = |addr: u16, n: usize| -> Option<std::ops::Range<usize>> {
            let start = addr as usize;
            (start + n <= 65536).then_some(start..start + n)
        };
        let (table, addr, count) = match req {
            Request::ReadCoils { addr, count } => (Table::Coil, *addr, *count),
            Request::ReadDiscreteInputs { addr, count } => (Table::Discrete, *addr, *count),
            Request::ReadHoldingRegisters { addr, count } => (Table::Holding, *addr, *count),
            Request::ReadInputRegisters { addr, count } => (Table::Input, *addr, *count),
            Request::WriteSingleCoil { addr, .. } => (Table::Coil, *addr, 1),
            Request::WriteSingleRegister { addr, .. } => (Table::Holding, *addr, 1),
            Request::WriteMultipleCoils { addr, values } => {
                (Table::Coil, *addr, values.len() as u16)
            }
            Request::WriteMultipleRegisters { addr, values } => {
                (Table::Holding, *addr, values.len() as u16)
            }
        };
        if self.in_hole(table, addr, count) {
            return Response::Exception(Exception::IllegalDataAddress);
        }
        let Some(r) = range(addr, count as usize) else {
            return Response::Exception(Exception::IllegalDataAddress);
        };
        match req {
            Request::ReadCoils { .. } => Response::Bits(self.co[r].to_vec()),
            Request::ReadDiscreteInputs { .. } => Response::Bits(self.di[r].to_vec()),
            Request::ReadHoldingRegisters { .. } => {
                let regs = self.hr[r.clone()].to_vec();
                if self.changing {
                    self.hr[r].iter_mut().for_each(|v| *v = v.wrapping_add(1));
                }
                Response::Registers(regs)
            }
            Request::ReadInputRegisters { .. } => {
                let regs = self.ir[r.clone()].to_vec();
                if self.changing {
                    self.ir[r].iter_mut().for_each(|v| *v = v.wrapping_add(1));
                }
                Response::Registers(regs)
            }
            Request::WriteSingleCoil { addr, value } => {
                self.co[*addr as usize] = *value;
                Response::Written {
                    addr: *addr,
                    value: if *value { 0xFF00 } else { 0 },
                }
            }
            Request::WriteSingleRegister { addr, value } => {
                self.hr[*addr as usize] = *value;
                Response::Written {
                    addr: *addr,
                    value: *value,
                }
            }
            Request::WriteMultipleCoils { addr, values } => {
                self.co[r].copy_from_slice(values);
                Response::Written {
                    addr: *addr,
                    value: count,
                }
            }
            Request::WriteMultipleRegisters { addr, values } => {
                self.hr[r].copy_from_slice(values);
                Response::Written {
                    addr: *addr,
                    value: count,
                }
            }
        }
    }
}

struct Options {
    bind: String,
    port: u16,
    holes: Vec<(Table, u16, u16)>,
    max_clients: usize,
    log_requests: bool,
    delay: Duration,
    changing: bool,
}

fn parse_hole(s: &str) -> Result<(Table, u16, u16), String> {
    let (t, range) = s.split_once(':').ok_or(format!("bad hole `{s}`"))?;
    let table = match t {
        "hr" => Table::Holding,
        "ir" => Table::Input,
        "co" => Table::Coil,
        "di" => Table::Discrete,
        _ => return Err(format!("bad table in `{s}`")),
    };
    let (a, b) = range.split_once('-').unwrap_or((range, range));
    let a: u16 = a.parse().map_err(|_| format!("bad address in `{s}`"))?;
    let b: u16 = b.parse().map_err(|_| format!("bad address in `{s}`"))?;
    Ok((table, a.min(b), a.max(b)))
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        bind: "127.0.0.1".into(),
        port: 5020,
        holes: Vec::new(),
        max_clients: usize::MAX,
        log_requests: false,
        delay: Duration::ZERO,
        changing: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bind" => o.bind = val()?,
            "--port" => o.port = val()?.parse().map_err(|_| "bad --port".to_string())?,
            "--hole" => o.holes.push(parse_hole(&val()?)?),
            "--max-clients" => {
                o.max_clients = val()?
                    .parse()
                    .map_err(|_| "bad --max-clients".to_string())?
            }
            "--log-requests" => o.log_requests = true,
            "--changing" => o.changing = true,
            "--delay-ms" => {
                o.delay =
                    Duration::from_millis(val()?.parse().map_err(|_| "bad --delay-ms".to_string())?)
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

fn serve(mut stream: TcpStream, bank: Arc<Mutex<Bank>>, log_requests: bool, delay: Duration) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    while let Ok(frame) = Frame::read_from(&mut stream) {
        let function = frame.pdu.first().copied().unwrap_or(0);
        let response = match Request::decode_pdu(&frame.pdu) {
            Ok(req) => {
                if log_requests {
                    eprintln!("request {peer} unit {} {req:?}", frame.unit);
                }
                bank.lock()
                    .map(|mut b| b.handle(&req))
                    .unwrap_or(Response::Exception(Exception::ServerDeviceFailure))
            }
            Err(code) => Response::Exception(code),
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let reply = Frame {
            tid: frame.tid,
            unit: frame.unit,
            pdu: response.encode_pdu(function),
        };
        if reply.write_to(&mut stream).is_err() {
            break;
        }
    }
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rtds-sim: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind((opts.bind.as_str(), opts.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "rtds-sim: cannot listen on {}:{}: {e}",
                opts.bind, opts.port
            );
            std::process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("rtds-sim listening on {addr}");
    let _ = std::io::stdout().flush();

    let bank = Arc::new(Mutex::new(if opts.changing {
        Bank::changing(opts.holes)
    } else {
        Bank::new(opts.holes)
    }));
    let start = Instant::now();
    let ticker = bank.clone();
    std::thread::spawn(move || {
        loop {
            if let Ok(mut b) = ticker.lock() {
                b.tick(start.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if clients.load(Ordering::SeqCst) >= opts.max_clients {
            eprintln!(
                "rtds-sim: refused a connection: {} client(s) already connected",
                opts.max_clients
            );
            drop(stream);
            continue;
        }
        clients.fetch_add(1, Ordering::SeqCst);
        let (bank, clients, log, delay) =
            (bank.clone(), clients.clone(), opts.log_requests, opts.delay);
        std::thread::spawn(move || {
            serve(stream, bank, log, delay);
            clients.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_patterns_and_holes() {
        let mut b = Bank::new(vec![(Table::Holding, 50, 59)]);
        assert_eq!(
            b.handle(&Request::ReadHoldingRegisters {
                addr: 206,
                count: 2
            }),
            Response::Registers(vec![0x42F7, 0x0000])
        );
        assert_eq!(
            b.handle(&Request::ReadHoldingRegisters {
                addr: 45,
                count: 10
            }),
            Response::Exception(Exception::IllegalDataAddress)
        );
        assert_eq!(
            b.handle(&Request::ReadHoldingRegisters {
                addr: 65535,
                count: 2
            }),
            Response::Exception(Exception::IllegalDataAddress)
        );
        b.handle(&Request::WriteMultipleRegisters {
            addr: 100,
            values: vec![7, 8],
        });
        assert_eq!(b.hr[100..102], [7, 8]);
    }

    #[test]
    fn live_values_move() {
        let mut b = Bank::new(Vec::new());
        b.tick(15.0);
        assert_eq!(b.hr[0], 15);
        assert_eq!(b.hr[1] as i16, 50);
        b.tick(20.0);
        assert_eq!(b.hr[1] as i16, 100);
    }

    #[test]
    fn changing_registers_step_on_every_read() {
        let mut b = Bank::changing(Vec::new());
        b.tick(15.0);
        let read =
            |b: &mut Bank| match b.handle(&Request::ReadHoldingRegisters { addr: 0, count: 3 }) {
                Response::Registers(r) => r,
                other => panic!("{other:?}"),
            };
        assert_eq!(read(&mut b), [0x4000, 0x4025, 0x404A]);
        assert_eq!(read(&mut b), [0x4001, 0x4026, 0x404B]);
        // 1023 × 37 mod 1024 = 987; the top register wraps nothing yet.
        assert_eq!(b.hr[1023], 0x4000 + 987);
        assert_eq!(b.ir[2], 0x404A);
    }
}
