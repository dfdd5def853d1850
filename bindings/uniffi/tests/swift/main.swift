// Swift tests of the vitalwire bindings: spec vectors, every profile in-process, error paths,
// and interop with a Rust `vitalwire host` over loopback TCP.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

var passed = 0
var failed = 0

func check(_ name: String, _ body: () throws -> Void) {
    do {
        try body(); passed += 1; print("ok   \(name)")
    } catch {
        failed += 1; print("FAIL \(name): \(error)")
    }
}

struct Failure: Error { let what: String }
func expect(_ cond: Bool, _ what: String) throws { if !cond { throw Failure(what: what) } }

extension Data {
    init(hex: String) {
        var d = Data(); var i = hex.startIndex
        while i < hex.endIndex { let j = hex.index(i, offsetBy: 2); d.append(UInt8(hex[i..<j], radix: 16)!); i = j }
        self = d
    }
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}

func responderOptions(_ p: [String: Any]? = nil, pskIds: [Data] = [], psks: [Data] = [], eph: Data? = nil) -> ResponderOptions {
    ResponderOptions(maxFrameLen: UInt16(p?["max_frame_len"] as? Int ?? 65535), rekeyInterval: UInt32(p?["rekey_interval"] as? Int ?? 1048576),
                     maxMessageLen: UInt32(p?["max_message_len"] as? Int ?? 4194304), allowPairing: false, pskIds: pskIds, psks: psks,
                     ephemeralForTestingOnly: eph)
}

func initiatorOptions(_ profile: String, _ suite: String, _ id: String, hostKey: Data?, pins: [Data] = [], psk: Data? = nil, pskId: Data? = nil) -> InitiatorOptions {
    InitiatorOptions(profile: profile, suite: suite, deviceId: id, hostKey: hostKey, pinnedHostKeys: pins, psk: psk, pskId: pskId,
                     pairing: false, model: "", firmware: "", maxFrameLen: 65535, ephemeralForTestingOnly: nil)
}

func pump(_ a: Connection, _ b: Connection) throws {
    for _ in 0..<3 { _ = try b.receive(data: a.dataToSend()); _ = try a.receive(data: b.dataToSend()) }
}

let args = CommandLine.arguments
let root = URL(fileURLWithPath: args[1])
let vectors = try! FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent("spec/vectors").path)
    .filter { $0.hasSuffix(".json") && !$0.hasPrefix("datagram") && !$0.hasPrefix("fragments") }.sorted()
for name in vectors {
    check("vector \(name)") {
        let raw = try Data(contentsOf: root.appendingPathComponent("spec/vectors/\(name)"))
        let v = try JSONSerialization.jsonObject(with: raw) as! [String: Any]
        let r = v["responder"] as! [String: Any], i = v["initiator"] as! [String: Any]
        let trust = TrustStore()
        try trust.add(publicKey: Data(hex: i["static_public"] as! String), deviceId: "", label: "")
        let pskId = i["psk_id"] as! String, psk = i["psk"] as! String
        let host = try Connection.responder(keypair: Keypair.fromPrivate(privateKey: Data(hex: r["static_private"] as! String)), trust: trust,
            options: responderOptions(r["params"] as? [String: Any], pskIds: pskId.isEmpty ? [] : [Data(hex: pskId)], psks: psk.isEmpty ? [] : [Data(hex: psk)],
                                      eph: Data(hex: r["ephemeral_private"] as! String)))
        var produced = "", expected = ""
        for f in v["frames"] as! [[String: Any]] {
            let wire = f["wire"] as! String
            if f["from"] as! String == "initiator" { _ = try host.receive(data: Data(hex: wire)) } else {
                expected += wire
                if f["phase"] as! String == "transport" && f["kind"] as! String == "DATA" {
                    produced += host.dataToSend().hex
                    produced += try host.send(channel: UInt8(f["channel"] as! Int), payload: Data(hex: f["payload"] as! String)).hex
                }
            }
        }
        produced += host.dataToSend().hex
        try expect(produced == expected, "responder bytes differ")
        try expect(host.handshakeHash()?.hex == v["handshake_hash"] as? String, "handshake hash")
    }
}
let hostKeys = try! Keypair.fromPrivate(privateKey: Data(repeating: 0x11, count: 32))
let devKeys = try! Keypair.fromPrivate(privateKey: Data(repeating: 0x22, count: 32))
for profile in ["xx", "ik", "kk", "xxpsk3"] {
    for suite in ["chachapoly", "aesgcm"] {
        check("session \(profile) \(suite)") {
            let trust = TrustStore(); try trust.add(publicKey: devKeys.publicKey(), deviceId: "PM-1", label: "")
            let psk = Data(repeating: 3, count: 32), pskId = Data("batch".utf8)
            let opts: InitiatorOptions
            switch profile {
            case "ik", "kk": opts = initiatorOptions(profile, suite, "PM-1", hostKey: hostKeys.publicKey())
            case "xxpsk3": opts = initiatorOptions(profile, suite, "PM-1", hostKey: nil, pins: [hostKeys.publicKey()], psk: psk, pskId: pskId)
            default: opts = initiatorOptions(profile, suite, "PM-1", hostKey: nil, pins: [hostKeys.publicKey()])
            }
            let dev = try Connection.initiator(keypair: devKeys, options: opts)
            let host = try Connection.responder(keypair: hostKeys, trust: trust, options: responderOptions(pskIds: [pskId], psks: [psk]))
            try pump(dev, host)
            try expect(host.peerDeviceId() == "PM-1", "device id")
            let got = try host.receive(data: dev.send(channel: 2, payload: Data("SpO2=98".utf8)))
            try expect(got.count == 1 && got[0].payload == Data("SpO2=98".utf8), "data")
        }
    }
}
check("tampering throws Authentication") {
    let trust = TrustStore(); try trust.add(publicKey: devKeys.publicKey(), deviceId: "PM-1", label: "")
    let dev = try Connection.initiator(keypair: devKeys, options: initiatorOptions("ik", "chachapoly", "PM-1", hostKey: hostKeys.publicKey()))
    let host = try Connection.responder(keypair: hostKeys, trust: trust, options: responderOptions())
    try pump(dev, host)
    var f = try dev.send(channel: 1, payload: Data("x".utf8)); f[4] ^= 1
    do { _ = try host.receive(data: f); throw Failure(what: "accepted") } catch VitalwireError.Authentication(_) {}
    try expect(host.state() == "failed", "failed closed")
}
check("untrusted, truncated, config errors") {
    let dev = try Connection.initiator(keypair: Keypair.generate(), options: initiatorOptions("ik", "chachapoly", "X", hostKey: hostKeys.publicKey()))
    let host = try Connection.responder(keypair: hostKeys, trust: TrustStore(), options: responderOptions())
    do { _ = try host.receive(data: dev.dataToSend()); throw Failure(what: "accepted") } catch VitalwireError.UntrustedPeer(_) {}
    do { _ = try Keypair.fromPrivate(privateKey: Data([1, 2])); throw Failure(what: "short key") } catch VitalwireError.Config(_) {}
    let trust = TrustStore(); try trust.add(publicKey: devKeys.publicKey(), deviceId: "PM-1", label: "")
    let d2 = try Connection.initiator(keypair: devKeys, options: initiatorOptions("ik", "chachapoly", "PM-1", hostKey: hostKeys.publicKey()))
    let h2 = try Connection.responder(keypair: hostKeys, trust: trust, options: responderOptions())
    try pump(d2, h2)
    _ = try h2.receive(data: d2.send(channel: 1, payload: Data([1])))
    do { try h2.endOfStream(); throw Failure(what: "clean?") } catch VitalwireError.Truncated(_) {}
}
check("README example compiles and runs") { try expect(try example() == "HR=72", "example") }
if args.count >= 5 {
    check("interop: Swift device to the Rust host") {
        let parts = args[2].split(separator: ":")
        let dev = try Connection.initiator(keypair: Keypair.load(path: args[3]),
                                           options: initiatorOptions("ik", "chachapoly", "SWIFT-1", hostKey: loadPublicKey(path: args[4])))
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(parts[1])!).bigEndian
        addr.sin_addr.s_addr = inet_addr(String(parts[0]))
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        try expect(ok == 0, "connect")
        defer { close(fd) }
        func sendAll(_ d: Data) { d.withUnsafeBytes { p in var off = 0; while off < d.count { off += write(fd, p.baseAddress! + off, d.count - off) } } }
        var buf = [UInt8](repeating: 0, count: 65536)
        func readSome() -> Data { let n = read(fd, &buf, buf.count); return n > 0 ? Data(buf[0..<n]) : Data() }
        sendAll(dev.dataToSend())
        while dev.state() == "handshaking" { let d = readSome(); try expect(!d.isEmpty, "host hung up"); _ = try dev.receive(data: d); sendAll(dev.dataToSend()) }
        for k in 0..<5 { sendAll(try dev.send(channel: 1, payload: Data("HR=\(90 + k)".utf8))) }
        sendAll(try dev.close(code: 0))
        while dev.state() != "closed" { let d = readSome(); if d.isEmpty { break }; _ = try dev.receive(data: d) }
        try expect(dev.state() == "closed", "the host answered CLOSE")
    }
}
print("\(passed) passed, \(failed) failed")
exit(failed > 0 ? 1 : 0)
