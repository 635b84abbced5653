// The register form: the files of a staging directory (RegisterFromPaths,
// the non-fd variant: the bridge cannot pass file descriptors), options
// as the daemon defines them. The daemon reads only its import directory,
// so a staging directory elsewhere is brought in first: the files are
// checked readable as the logged-in user, copied with administrative
// access (the import directory belongs to the daemon's group) under a
// fresh name, with progress, and the copy is removed after the call
// whatever its outcome. The daemon validates; its errors are shown next
// to the field they name.

import { describeError, errorName, isDenied, sentence, showAlert } from "./util.js";

const FIELDS = ["staging", "name", "vcpus", "vcpu_type", "policy", "min_tcb"];
/** What RegisterFromPaths reads; cmdline and vmk.sealed the page reads. */
const ARTIFACTS = [["firmware", "firmware.fd"], ["kernel", "kernel"], ["initrd", "initrd"]];
/** How often the copy's progress is read. */
const PROGRESS_MS = 250;

/** Whether PATH lies below DIR (both absolute, without trailing slashes;
 *  the daemon checks the real paths again). */
export function isBelow(path, dir) {
    return dir !== "" && path.startsWith(dir + "/");
}

/** A directory name for the copy: the staging directory's name, the time. */
export function copyName(staging, now = new Date()) {
    const base = (staging.split("/").pop() || "staging").replace(/[^A-Za-z0-9._-]/g, "_");
    const stamp = now.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
    return "cockpit-" + base + "-" + stamp;
}

/** Mebibytes with one decimal. */
function mib(bytes) {
    return (bytes / (1 << 20)).toFixed(1) + " MiB";
}

/** A command through the bridge, as a native promise; stdout. Administrative
 *  access when `admin` (Cockpit's superuser, when the user has unlocked it). */
function run(argv, admin = false) {
    const opts = { err: "message" };
    if (admin) opts.superuser = "try";
    return new Promise((resolve, reject) => cockpit.spawn(argv, opts).then(resolve, reject));
}

function delay(ms) {
    return new Promise(resolve => window.setTimeout(resolve, ms));
}

const TCB = ["bootloader", "tee", "snp", "microcode", "fmc"];

/** The form field a daemon error concerns ("form" when none). */
export function fieldOf(err) {
    const kind = errorName(err);
    if (isDenied(err)) return "form";
    if (kind === "AlreadyExists") return "name";
    if (kind === "SealedKey") return "staging";
    if (kind !== "InvalidInput") return "form";
    const msg = err.message || "";
    const key = (msg.match(/^option "([a-z_]+)"/) || msg.match(/^([a-z_]+):/) || [])[1] || "";
    if (key === "name") return "name";
    if (key === "vcpus") return "vcpus";
    if (key === "vcpu_type") return "vcpu_type";
    if (key.startsWith("allow_")) return "policy";
    if (key.startsWith("min_tcb")) return "min_tcb";
    if (key === "cmdline" || key === "sealed_vmk" || /\bpath\b|firmware|kernel|initrd|import directory/.test(msg))
        return "staging";
    return "form";
}

export class Register {
    constructor(client, manager, onRegistered) {
        this.client = client;
        this.manager = manager;
        this.onRegistered = onRegistered;
        this.form = document.getElementById("register-form");
        this.form.addEventListener("submit", ev => {
            ev.preventDefault();
            this.submit();
        });
    }

    /** Fills what comes from the daemon: vCPU types, import directory. */
    refresh() {
        const select = document.getElementById("f-vcpu-type");
        const types = this.manager.SupportedVcpuTypes || [];
        if (select.options.length !== types.length) {
            const keep = select.value || "EPYC-v4";
            select.replaceChildren(...types.map(t => new Option(t, t, false, t === keep)));
        }
        const dir = this.manager.ImportDirectory || "";
        document.getElementById("import-dir").textContent = dir;
        const staging = document.getElementById("f-staging");
        if (!staging.placeholder && dir) staging.placeholder = dir.replace(/\/+$/, "") + "/STAGING";
    }

    clearErrors() {
        for (const f of FIELDS) {
            document.getElementById("err-" + f).textContent = "";
            this.form.querySelector('[data-field="' + f + '"]').classList.remove("sg-invalid");
        }
        document.getElementById("err-form").textContent = "";
    }

    fieldError(field, text) {
        if (field === "form") {
            document.getElementById("err-form").textContent = text;
            return;
        }
        document.getElementById("err-" + field).textContent = text;
        this.form.querySelector('[data-field="' + field + '"]').classList.add("sg-invalid");
    }

    /** a{sv} from the form; the daemon checks every value. */
    options(cmdline) {
        const v = name => this.form.elements[name].value.trim();
        const opts = {
            name: cockpit.variant("s", v("name")),
            cmdline: cockpit.variant("s", cmdline),
            vcpus: cockpit.variant("u", Number(v("vcpus"))),
            vcpu_type: cockpit.variant("s", this.form.elements.vcpu_type.value),
        };
        for (const b of ["allow_smt", "allow_debug", "allow_migrate_ma", "allow_test_root", "allow_offline_unlock"]) {
            if (this.form.elements[b].checked) opts[b] = cockpit.variant("b", true);
        }
        for (const k of TCB) {
            const raw = v("min_tcb_" + k);
            if (raw !== "") opts["min_tcb_" + k] = cockpit.variant("y", Number(raw));
        }
        return opts;
    }

    /** Client-side checks only where the value cannot be sent at all. */
    precheck() {
        let ok = true;
        const v = name => this.form.elements[name].value.trim();
        if (!v("staging")) {
            this.fieldError("staging", "Give the staging directory that snpguardctl convert wrote.");
            ok = false;
        }
        const vcpus = Number(v("vcpus"));
        if (!Number.isInteger(vcpus) || vcpus < 0 || vcpus > 0xffffffff) {
            this.fieldError("vcpus", "A whole number of vCPUs.");
            ok = false;
        }
        for (const k of TCB) {
            const raw = v("min_tcb_" + k);
            const n = Number(raw);
            if (raw !== "" && (!Number.isInteger(n) || n < 0 || n > 255)) {
                this.fieldError("min_tcb", "Each TCB minimum is a number from 0 to 255.");
                ok = false;
            }
        }
        return ok;
    }

    async readStaging(dir) {
        // A native promise: cockpit's own do not turn a throw into a rejection.
        const read = (name, binary) => new Promise((resolve, reject) =>
            cockpit.file(dir + "/" + name, binary ? { binary: true } : {}).read().then(resolve, reject))
                .then(content => {
                    if (content === null) throw new Error(dir + "/" + name + " does not exist");
                    return content;
                }, err => { throw new Error("cannot read " + dir + "/" + name + ": " + describeError(err)) });
        let cmdline = await read("cmdline", false);
        // One trailing newline is not part of the command line.
        if (cmdline.endsWith("\n")) cmdline = cmdline.slice(0, -1);
        const sealed = await read("vmk.sealed", true);
        return { cmdline, sealed: cockpit.base64_encode(sealed) };
    }

    progress(text, fraction) {
        document.getElementById("staging-progress").hidden = text === "";
        document.getElementById("staging-progress-text").textContent = text;
        document.getElementById("staging-progress-bar").value = fraction;
    }

    /** Copies the artifacts of DIR into a new directory below the import
     *  directory; resolves to that directory. Removes what it made when a
     *  step fails. */
    async bringIn(dir, importDir) {
        const sizes = [];
        for (const [, file] of ARTIFACTS) {
            const src = dir + "/" + file;
            try {
                // As the logged-in user: what they cannot read is not copied.
                await run(["test", "-f", src, "-a", "-r", src]);
                sizes.push(Number((await run(["stat", "-L", "-c", "%s", "--", src])).trim()));
            } catch (e) {
                throw new Error(src + " is not a file you can read.");
            }
        }
        const total = sizes.reduce((a, b) => a + b, 0) || 1;
        const dest = importDir + "/" + copyName(dir);
        try {
            await run(["mkdir", "-m", "0750", "--", dest], true);
        } catch (e) {
            throw new Error("Cannot create " + dest + " (" + sentence(describeError(e)).replace(/\.$/, "") +
                            "). Copying into the import directory needs administrative access: unlock it in Cockpit, or copy the staging directory there yourself.");
        }
        let done = 0;
        try {
            for (let i = 0; i < ARTIFACTS.length; i++) {
                const file = ARTIFACTS[i][1];
                const dst = dest + "/" + file;
                // 0640: the daemon reads it through the directory's group.
                const copy = run(["install", "-m", "0640", "--", dir + "/" + file, dst], true);
                let finished = false;
                copy.then(() => { finished = true }, () => { finished = true });
                while (!finished) {
                    const partial = await run(["stat", "-c", "%s", "--", dst], true).then(Number, () => 0);
                    const now = done + Math.min(partial, sizes[i]);
                    this.progress("Copying " + file + " into the import directory: " + mib(now) + " of " + mib(total) +
                                  " (" + Math.floor(100 * now / total) + "%)", now / total);
                    await Promise.race([copy.catch(() => undefined), delay(PROGRESS_MS)]);
                }
                await copy;
                done += sizes[i];
            }
        } catch (e) {
            await this.removeCopy(dest);
            throw new Error("Copying " + dir + " into the import directory failed: " + sentence(describeError(e)));
        }
        this.progress("Copied " + ARTIFACTS.length + " files (" + mib(done) + ") into " + dest + ".", 1);
        return dest;
    }

    async removeCopy(dest) {
        try {
            await run(["rm", "-rf", "--", dest], true);
            return true;
        } catch (e) {
            showAlert("error", "Could not remove " + dest, sentence(describeError(e)) + " Remove it by hand.", true);
            return false;
        }
    }

    async submit() {
        this.clearErrors();
        this.progress("", 0);
        if (!this.precheck()) return;
        const button = document.getElementById("register-submit");
        button.disabled = true;
        let copied = null;
        try {
            const dir = this.form.elements.staging.value.trim().replace(/\/+$/, "");
            const importDir = (this.manager.ImportDirectory || "").replace(/\/+$/, "");
            let staged;
            try {
                staged = await this.readStaging(dir);
                if (!isBelow(dir, importDir)) copied = await this.bringIn(dir, importDir);
            } catch (e) {
                this.fieldError("staging", e.message);
                return;
            }
            const from = copied || dir;
            const files = {};
            for (const [key, file] of ARTIFACTS) files[key] = from + "/" + file;
            const [path] = await this.manager.call("RegisterFromPaths", [files, this.options(staged.cmdline), staged.sealed]);
            const name = this.form.elements.name.value.trim();
            showAlert("success", "Registered " + name, "");
            this.form.reset();
            this.refresh();
            this.onRegistered(path.split("/").pop());
        } catch (err) {
            const field = fieldOf(err);
            this.fieldError(field, describeError(err));
            if (isDenied(err)) showAlert("error", "Registration not permitted.", describeError(err));
        } finally {
            if (copied && await this.removeCopy(copied))
                this.progress(document.getElementById("staging-progress-text").textContent.replace(/\.$/, "") +
                              "; the copy is removed again.", 1);
            button.disabled = false;
        }
    }
}
