//! System test: one `vitalwire host` process serving TCP and UDP at once, a CLI device on each,
//! both streams written by the host.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn one_host_serves_tcp_and_udp_devices_together() {
    let sb = Sandbox::new("basics");
    sb.keygen("host");
    sb.keygen("pm1");
    sb.keygen("pm2");
    sb.trust_add("pm1", "PM-1");
    sb.trust_add("pm2", "PM-2");
    let host = HostProc::start(&sb, HostArgs { udp: true, ..HostArgs::default() });
    let tcp = start_device(&sb, &DeviceArgs::new("pm1", "PM-1", host.tcp.unwrap()));
    let udp =
        start_device(&sb, &DeviceArgs { udp: true, ..DeviceArgs::new("pm2", "PM-2", host.udp.unwrap()) });
    let both = wait_until(Duration::from_secs(30), || {
        let t = host.telemetry();
        t.iter().filter(|v| v["device_id"] == "PM-1").count() >= 10
            && t.iter().filter(|v| v["device_id"] == "PM-2").count() >= 10
    });
    assert!(both.is_some(), "host: {}\ntcp: {}\nudp: {}", host.proc.stderr(), tcp.stderr(), udp.stderr());
    let established = host.events_named("session_established");
    assert!(established.iter().any(|e| e["device_id"] == "PM-1"), "{established:?}");
    assert!(established.iter().any(|e| e["device_id"] == "PM-2"), "{established:?}");
}
