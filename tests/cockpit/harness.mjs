// The world the Cockpit page test runs in: a private system-type
// dbus-daemon with the project's bus policy, a mock polkit authority
// (allow/deny switchable), the real snpguardd on that bus, and real
// cockpit-ws + cockpit-bridge pointed at it, serving cockpit/ as the
// "snpguard" package. Everything is started here and killed by stop().

import { spawn, execFile } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import dbus from "dbus-next";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const DEADLINE_MS = 60_000;

/** Resolves when cond() is truthy, polling with a deadline. */
export async function waitFor(cond, what, ms = DEADLINE_MS) {
    const end = Date.now() + ms;
    for (;;) {
        const v = await cond();
        if (v) return v;
        if (Date.now() > end) throw new Error("timed out waiting for " + what);
        await new Promise(r => setTimeout(r, 50));
    }
}

function binary(name) {
    const dir = process.env.SNPGUARD_BIN_DIR || path.join(REPO, "target/debug");
    const p = path.join(dir, name);
    if (!fs.existsSync(p)) throw new Error(p + " is missing; run `cargo build -p snpguardd -p snpguardctl -p snpguard-sim` (make test-cockpit does)");
    return p;
}

function cockpitWs() {
    for (const p of ["/usr/lib/cockpit/cockpit-ws", "/usr/libexec/cockpit-ws"])
        if (fs.existsSync(p)) return p;
    throw new Error("cockpit-ws is missing; run scripts/setup-deps.sh (Debian: cockpit-ws cockpit-bridge)");
}

function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.on("error", reject);
        srv.listen(0, "127.0.0.1", () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

function busConfig(dir, uid) {
    // dbus-daemon's system.conf defaults, the mock polkit's own policy,
    // then the project's policy file (as snpguardd/tests/common does).
    const user = uid === 0 ? "" : `<policy user="${uid}">
    <allow own="org.snpguard.SnpGuard1"/>
    <allow send_destination="org.snpguard.SnpGuard1"/>
  </policy>`;
    return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=${dir}/bus</listen>
  <auth>EXTERNAL</auth>
  <include>${path.join(REPO, "tests/dbus/private-system-bus.conf")}</include>
  <policy user="${uid}">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  ${user}
  <include>${path.join(REPO, "dbus/org.snpguard.SnpGuard1.conf")}</include>
</busconfig>
`;
}

/** org.freedesktop.PolicyKit1.Authority answering from `allow`. */
class MockAuthority extends dbus.interface.Interface {
    constructor() {
        super("org.freedesktop.PolicyKit1.Authority");
        this.allow = true;
        this.calls = [];
    }

    CheckAuthorization(subject, action, details, flags, cancellationId) {
        const name = subject[1].name ? subject[1].name.value : "";
        this.calls.push({ kind: subject[0], name, action, flags, allowed: this.allow });
        return [this.allow, false, {}];
    }
}
MockAuthority.configureMembers({
    methods: {
        CheckAuthorization: { inSignature: "(sa{sv})sa{ss}us", outSignature: "(bba{ss})" },
    },
});

export class World {
    constructor() {
        this.children = [];
        this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "snpguard-cockpit-"));
        fs.chmodSync(this.dir, 0o755);
        this.state = path.join(this.dir, "state");
        this.importDir = path.join(this.state, "import");
        this.out = process.env.COCKPIT_TEST_OUT || path.join(REPO, "build/cockpit-test");
        fs.mkdirSync(this.out, { recursive: true });
    }

    spawnLogged(name, cmd, args, env) {
        const log = fs.openSync(path.join(this.out, name + ".log"), "w");
        const child = spawn(cmd, args, { env, stdio: ["ignore", log, log] });
        fs.closeSync(log);
        child.label = name;
        this.children.push(child);
        child.on("exit", (code, sig) => { child.exited = { code, sig } });
        return child;
    }

    log(name) {
        try {
            return fs.readFileSync(path.join(this.out, name + ".log"), "utf8");
        } catch {
            return "";
        }
    }

    async start() {
        await this.startBus();
        await this.startPolkit();
        await this.startDaemon();
        await this.startCockpit();
    }

    async startBus() {
        const conf = path.join(this.dir, "bus.conf");
        fs.writeFileSync(conf, busConfig(this.dir, process.getuid()));
        this.spawnLogged("dbus-daemon", "dbus-daemon", ["--config-file=" + conf, "--nofork", "--nopidfile"], process.env);
        const sock = path.join(this.dir, "bus");
        await waitFor(() => fs.existsSync(sock), "the bus socket");
        this.busAddress = "unix:path=" + sock;
        this.bus = dbus.sessionBus({ busAddress: this.busAddress });
        const obj = await this.bus.getProxyObject("org.freedesktop.DBus", "/org/freedesktop/DBus");
        this.busIface = obj.getInterface("org.freedesktop.DBus");
    }

    async startPolkit() {
        this.polkit = new MockAuthority();
        this.polkitBus = dbus.sessionBus({ busAddress: this.busAddress });
        this.polkitBus.export("/org/freedesktop/PolicyKit1/Authority", this.polkit);
        await this.polkitBus.requestName("org.freedesktop.PolicyKit1", 0);
    }

    async startDaemon() {
        const confDir = path.join(this.dir, "conf.d");
        fs.mkdirSync(confDir);
        const conf = path.join(confDir, "snpguardd.toml");
        // HTTPS on an ephemeral loopback port: this test does not attest.
        fs.writeFileSync(conf, 'listen = "127.0.0.1:0"\n');
        const env = { ...process.env };
        delete env.NOTIFY_SOCKET;
        delete env.CREDENTIALS_DIRECTORY;
        this.daemon = this.spawnLogged("snpguardd", binary("snpguardd"),
            ["--state-dir", this.state, "--bus", this.busAddress, "--config", conf], env);
        await waitFor(async () => {
            if (this.daemon.exited) throw new Error("snpguardd exited: " + this.log("snpguardd"));
            return this.busIface.NameHasOwner("org.snpguard.SnpGuard1");
        }, "snpguardd on the bus");
    }

    async startCockpit() {
        // cockpit-bridge finds packages in XDG_DATA_DIRS/cockpit.
        const share = path.join(this.dir, "share");
        fs.mkdirSync(path.join(share, "cockpit"), { recursive: true });
        fs.symlinkSync(path.join(REPO, "cockpit"), path.join(share, "cockpit/snpguard"));
        const home = path.join(this.dir, "home");
        fs.mkdirSync(home);
        this.port = await freePort();
        const env = {
            ...process.env,
            HOME: home,
            XDG_DATA_DIRS: share + ":/usr/share",
            XDG_CONFIG_DIRS: path.join(this.dir, "etc"),
            DBUS_SYSTEM_BUS_ADDRESS: this.busAddress,
        };
        this.cockpit = this.spawnLogged("cockpit-ws", cockpitWs(),
            ["--no-tls", "--local-session=cockpit-bridge", "--port", String(this.port), "--address", "127.0.0.1"], env);
        this.origin = "http://127.0.0.1:" + this.port;
        await waitFor(async () => {
            if (this.cockpit.exited) throw new Error("cockpit-ws exited: " + this.log("cockpit-ws"));
            try {
                const r = await fetch(this.origin + "/cockpit/@localhost/snpguard/manifest.json");
                return r.ok;
            } catch {
                return false;
            }
        }, "cockpit-ws serving the snpguard package");
        this.pageUrl = this.origin + "/cockpit/@localhost/snpguard/index.html";
    }

    /** A staging directory as convert writes it, by default inside the
     *  import directory. */
    async stage(name, parent = this.importDir) {
        const suffix = path.join(process.env.SNPGUARD_TESTDATA || path.join(REPO, "../shared/testdata/snp"),
                                 "measurement/ovmf_AmdSev_suffix.bin");
        if (!fs.existsSync(suffix)) throw new Error(suffix + " is missing; set SNPGUARD_TESTDATA");
        const dir = path.join(parent, name);
        await run(binary("snpguard-sim"), ["stage", "--dir", dir,
            "--ingestion-key", path.join(this.state, "ingestion.pub"), "--ovmf-suffix", suffix]);
        return dir;
    }

    /** snpguardctl on the private bus; resolves to stdout. */
    ctl(...args) {
        return run(binary("snpguardctl"), ["--bus-address", this.busAddress, ...args]);
    }

    async stop() {
        for (const b of [this.bus, this.polkitBus]) if (b) b.disconnect();
        for (const c of this.children.reverse()) {
            if (c.exited) continue;
            const gone = new Promise(r => c.once("exit", r));
            c.kill("SIGTERM");
            await gone;
        }
        fs.rmSync(this.dir, { recursive: true, force: true });
    }
}

export function run(cmd, args) {
    return new Promise((resolve, reject) => {
        execFile(cmd, args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
            if (err) reject(new Error(cmd + " " + args.join(" ") + " failed: " + err.message + "\n" + stderr));
            else resolve(stdout);
        });
    });
}
