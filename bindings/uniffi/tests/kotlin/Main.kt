// Kotlin tests of the vitalwire bindings: spec vectors, every profile in-process, error
// paths, and interop with a Rust `vitalwire host` over loopback TCP.
import org.vitalwire.*
import java.io.File
import java.net.Socket

var passed = 0
var failed = 0

fun check(name: String, body: () -> Unit) {
    try {
        body(); passed++; println("ok   $name")
    } catch (e: Throwable) {
        failed++; println("FAIL $name: $e")
    }
}

fun expect(cond: Boolean, what: String) { if (!cond) throw AssertionError(what) }

// A minimal JSON reader for the vector files (objects, arrays, strings, numbers, booleans).
class Json(private val s: String) {
    private var i = 0
    fun parse(): Any? { ws(); val v = value(); ws(); return v }
    private fun ws() { while (i < s.length && s[i].isWhitespace()) i++ }
    private fun value(): Any? {
        ws()
        return when (s[i]) {
            '{' -> { i++; val m = LinkedHashMap<String, Any?>(); ws()
                if (s[i] == '}') { i++; return m }
                while (true) { ws(); val k = str(); ws(); i++; m[k] = value(); ws(); if (s[i++] == '}') return m } ; @Suppress("UNREACHABLE_CODE") m }
            '[' -> { i++; val l = ArrayList<Any?>(); ws()
                if (s[i] == ']') { i++; return l }
                while (true) { l.add(value()); ws(); if (s[i++] == ']') return l } ; @Suppress("UNREACHABLE_CODE") l }
            '"' -> str()
            't' -> { i += 4; true }
            'f' -> { i += 5; false }
            'n' -> { i += 4; null }
            else -> { val st = i; while (i < s.length && (s[i].isDigit() || s[i] in "-+.eE")) i++; s.substring(st, i).toLong() }
        }
    }
    private fun str(): String {
        i++; val b = StringBuilder()
        while (s[i] != '"') { if (s[i] == '\\') { i++; b.append(when (s[i]) { 'n' -> '\n'; 'u' -> { val c = s.substring(i + 1, i + 5).toInt(16).toChar(); i += 4; c }; else -> s[i] }) } else b.append(s[i]); i++ }
        i++; return b.toString()
    }
}

@Suppress("UNCHECKED_CAST") fun Any?.obj() = this as Map<String, Any?>
@Suppress("UNCHECKED_CAST") fun Any?.arr() = this as List<Any?>
fun String.hex(): ByteArray = ByteArray(length / 2) { substring(2 * it, 2 * it + 2).toInt(16).toByte() }
fun ByteArray.hex(): String = joinToString("") { "%02x".format(it) }

fun responderOptions(maxFrame: Int = 65535, rekey: Long = 1048576, maxMessage: Long = 4194304, pskIds: List<ByteArray> = listOf(), psks: List<ByteArray> = listOf(), eph: ByteArray? = null) =
    ResponderOptions(maxFrame.toUShort(), rekey.toUInt(), maxMessage.toUInt(), false, pskIds, psks, eph)

fun initiatorOptions(profile: String, suite: String, id: String, hostKey: ByteArray?, pins: List<ByteArray> = listOf(), psk: ByteArray? = null, pskId: ByteArray? = null) =
    InitiatorOptions(profile, suite, id, hostKey, pins, psk, pskId, false, "", "", 65535u, null)

fun pump(a: Connection, b: Connection) { repeat(3) { b.receive(a.dataToSend()); a.receive(b.dataToSend()) } }

fun main(args: Array<String>) {
    val root = File(args[0])
    for (f in File(root, "spec/vectors").listFiles()!!.filter { it.name.endsWith(".json") && !it.name.startsWith("datagram") && !it.name.startsWith("fragments") }.sorted()) {
        check("vector ${f.name}") {
            val v = Json(f.readText()).parse().obj()
            val r = v["responder"].obj(); val i = v["initiator"].obj(); val p = r["params"].obj()
            val trust = TrustStore()
            trust.add((i["static_public"] as String).hex(), "", "")
            val pskIds = if ((i["psk_id"] as String).isEmpty()) listOf() else listOf((i["psk_id"] as String).hex())
            val psks = if ((i["psk"] as String).isEmpty()) listOf() else listOf((i["psk"] as String).hex())
            val host = Connection.responder(Keypair.fromPrivate((r["static_private"] as String).hex()), trust,
                responderOptions((p["max_frame_len"] as Long).toInt(), p["rekey_interval"] as Long, p["max_message_len"] as Long, pskIds, psks, (r["ephemeral_private"] as String).hex()))
            var produced = ""; var expected = ""
            for (fr in v["frames"].arr()) {
                val frame = fr.obj(); val wire = (frame["wire"] as String)
                if (frame["from"] == "initiator") host.receive(wire.hex())
                else {
                    expected += wire
                    if (frame["phase"] == "transport" && frame["kind"] == "DATA")
                        produced += host.dataToSend().hex() + host.send((frame["channel"] as Long).toUByte(), (frame["payload"] as String).hex()).hex()
                }
            }
            produced += host.dataToSend().hex()
            expect(produced == expected, "responder bytes differ")
            expect(host.handshakeHash()!!.hex() == v["handshake_hash"], "handshake hash")
            expect(host.state() == "closed", "closed at the end")
        }
    }
    val hostKeys = Keypair.fromPrivate(ByteArray(32) { 0x11 })
    val devKeys = Keypair.fromPrivate(ByteArray(32) { 0x22 })
    for (profile in listOf("xx", "ik", "kk", "xxpsk3")) for (suite in listOf("chachapoly", "aesgcm")) {
        check("session $profile $suite") {
            val trust = TrustStore(); trust.add(devKeys.publicKey(), "PM-1", "")
            val psk = ByteArray(32) { 3 }; val pskId = "batch".toByteArray()
            val opts = when (profile) {
                "ik", "kk" -> initiatorOptions(profile, suite, "PM-1", hostKeys.publicKey())
                "xxpsk3" -> initiatorOptions(profile, suite, "PM-1", null, listOf(hostKeys.publicKey()), psk, pskId)
                else -> initiatorOptions(profile, suite, "PM-1", null, listOf(hostKeys.publicKey()))
            }
            val dev = Connection.initiator(devKeys, opts)
            val host = Connection.responder(hostKeys, trust, responderOptions(pskIds = listOf(pskId), psks = listOf(psk)))
            pump(dev, host)
            expect(host.peerDeviceId() == "PM-1", "device id")
            val got = host.receive(dev.send(2u, "SpO2=98".toByteArray()) + dev.sendMessage(3u, ByteArray(200_000) { 7 }))
            val data = got.filter { it.kind == "data" }
            expect(data.size == 2 && String(data[0].payload) == "SpO2=98" && data[1].payload.size == 200_000, "data")
            dev.close(); host.close()
        }
    }
    check("tampering raises Authentication and fails closed") {
        val trust = TrustStore(); trust.add(devKeys.publicKey(), "PM-1", "")
        val dev = Connection.initiator(devKeys, initiatorOptions("ik", "chachapoly", "PM-1", hostKeys.publicKey()))
        val host = Connection.responder(hostKeys, trust, responderOptions())
        pump(dev, host)
        val f = dev.send(1u, "x".toByteArray()); f[4] = (f[4].toInt() xor 1).toByte()
        try { host.receive(f); throw AssertionError("accepted") } catch (e: VitalwireException.Authentication) {}
        expect(host.state() == "failed", "failed")
        expect(host.events().any { it.kind == "authentication_failure" }, "event")
    }
    check("a failure after good frames delivers them, then throws; harmless errors are not fatal") {
        val trust = TrustStore(); trust.add(devKeys.publicKey(), "PM-1", "")
        val dev = Connection.initiator(devKeys, initiatorOptions("ik", "chachapoly", "PM-1", hostKeys.publicKey()))
        val host = Connection.responder(hostKeys, trust, responderOptions())
        pump(dev, host)
        val good = dev.send(1u, "HR=72".toByteArray())
        val bad = dev.send(1u, "HR=73".toByteArray()); bad[4] = (bad[4].toInt() xor 1).toByte()
        val got = host.receive(good + bad)
        expect(got.size == 1 && String(got[0].payload) == "HR=72", "the good frame is delivered")
        expect(host.state() == "failed" && host.pollTimeout() != null, "failed, the error due at once")
        try { host.receive(ByteArray(0)); throw AssertionError("no error") } catch (e: VitalwireException.Authentication) {}
        // A clean close stays clean: sending after it is Closed, and the state stays "closed".
        val d2 = Connection.initiator(devKeys, initiatorOptions("ik", "chachapoly", "PM-1", hostKeys.publicKey()))
        val h2 = Connection.responder(hostKeys, trust, responderOptions())
        pump(d2, h2)
        h2.receive(d2.close(0u)); d2.receive(h2.dataToSend())
        try { d2.send(1u, "late".toByteArray()); throw AssertionError("sent") } catch (e: VitalwireException.Closed) {}
        expect(d2.state() == "closed" && h2.state() == "closed", "closed, not failed")
    }
    check("untrusted device raises UntrustedPeer") {
        val dev = Connection.initiator(Keypair.generate(), initiatorOptions("ik", "chachapoly", "X", hostKeys.publicKey()))
        val host = Connection.responder(hostKeys, TrustStore(), responderOptions())
        try { host.receive(dev.dataToSend()); throw AssertionError("accepted") } catch (e: VitalwireException.UntrustedPeer) {}
        try { dev.receive(host.dataToSend()); throw AssertionError("accepted") } catch (e: VitalwireException.UntrustedPeer) {}
    }
    check("truncation, config errors, closed") {
        val trust = TrustStore(); trust.add(devKeys.publicKey(), "PM-1", "")
        val dev = Connection.initiator(devKeys, initiatorOptions("ik", "chachapoly", "PM-1", hostKeys.publicKey()))
        val host = Connection.responder(hostKeys, trust, responderOptions())
        pump(dev, host)
        host.receive(dev.send(1u, "x".toByteArray()))
        try { host.endOfStream(); throw AssertionError("clean?") } catch (e: VitalwireException.Truncated) {}
        try { Keypair.fromPrivate(ByteArray(3)); throw AssertionError("short key") } catch (e: VitalwireException.Config) {}
        try { Connection.initiator(devKeys, initiatorOptions("nope", "chachapoly", "x", null)); throw AssertionError("profile") } catch (e: VitalwireException.Config) {}
        dev.close(0u)
        try { dev.send(1u, ByteArray(1)); throw AssertionError("closed") } catch (e: VitalwireException.Closed) {}
    }
    check("AutoCloseable objects, fragments, fingerprint") {
        Keypair.generate().use { k -> expect(fingerprint(k.publicKey()) == k.fingerprint(), "fingerprint") }
        FragmentLink(20u).use { link ->
            val parts = link.split(ByteArray(50) { it.toByte() })
            expect(parts.size == 4 && parts.all { it.size <= 20 }, "split")
            val rx = FragmentLink(20u)
            expect(parts.map { rx.receive(it, 0u) }.last()!!.contentEquals(ByteArray(50) { it.toByte() }), "reassembled")
        }
    }
    check("README example compiles and runs") { expect(example() == "HR=72", "example") }
    if (args.size >= 4) check("interop: Kotlin device to the Rust host") {
        val (h, port) = args[1].split(":")
        val dev = Connection.initiator(Keypair.load(args[2]), initiatorOptions("ik", "chachapoly", "KOTLIN-1", loadPublicKey(args[3])))
        Socket(h, port.toInt()).use { sock ->
            val out = sock.getOutputStream(); val input = sock.getInputStream(); val buf = ByteArray(65536)
            out.write(dev.dataToSend())
            while (dev.state() == "handshaking") { val n = input.read(buf); expect(n > 0, "host hung up"); dev.receive(buf.copyOf(n)); out.write(dev.dataToSend()) }
            for (k in 0 until 5) out.write(dev.send(1u, "HR=${80 + k}".toByteArray()))
            out.write(dev.close(0u))
            while (dev.state() != "closed") { val n = input.read(buf); if (n <= 0) break; dev.receive(buf.copyOf(n)) }
            expect(dev.state() == "closed", "the host answered CLOSE")
        }
    }
    println("$passed passed, $failed failed")
    if (failed > 0) System.exit(1)
}
