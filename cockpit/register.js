// The register form: files from a staging directory inside the daemon's
// import directory (RegisterFromPaths, the non-fd variant), options as
// the daemon defines them. The daemon validates; its errors are shown
// next to the field they name.

import { describeError, errorName, isDenied, showAlert } from "./util.js";

const FIELDS = ["staging", "name", "vcpus", "vcpu_type", "policy", "min_tcb"];
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
        for (const b of ["allow_smt", "allow_debug", "allow_migrate_ma", "allow_test_root"]) {
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
            this.fieldError("staging", "Give the staging directory (inside " + (this.manager.ImportDirectory || "the import directory") + ").");
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

    async submit() {
        this.clearErrors();
        if (!this.precheck()) return;
        const button = document.getElementById("register-submit");
        button.disabled = true;
        try {
            const dir = this.form.elements.staging.value.trim().replace(/\/+$/, "");
            let staged;
            try {
                staged = await this.readStaging(dir);
            } catch (e) {
                this.fieldError("staging", e.message);
                return;
            }
            const files = { firmware: dir + "/firmware.fd", kernel: dir + "/kernel", initrd: dir + "/initrd" };
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
            button.disabled = false;
        }
    }
}
