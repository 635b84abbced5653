// Shared helpers: DOM building, errors, alerts, formatting.

export const BUS_NAME = "org.snpguard.SnpGuard1";
export const MANAGER_PATH = "/org/snpguard/SnpGuard1";
export const MANAGER_IFACE = "org.snpguard.SnpGuard1.Manager";
export const RECORD_IFACE = "org.snpguard.SnpGuard1.Record";
const ERROR_PREFIX = "org.snpguard.SnpGuard1.Error.";

/** The Manager object. Its properties are constant for the daemon's
 *  lifetime, so they are read once (GetAll). A cockpit.dbus proxy is not
 *  used: the bridge fills proxies from the ObjectManager, which does not
 *  list the object it sits on. */
export class Manager {
    constructor(client) {
        this.client = client;
        this.valid = false;
    }

    load() {
        return this.client.call(MANAGER_PATH, "org.freedesktop.DBus.Properties", "GetAll", [MANAGER_IFACE],
                                { type: "s" })
                .then(([props]) => {
                    for (const [k, v] of Object.entries(props)) this[k] = v.v;
                    this.valid = true;
                });
    }

    /** Calls a Manager method with its D-Bus signature. */
    call(method, args) {
        const types = { RegisterFromPaths: "a{ss}a{sv}ay", AuditTrail: "u", FindRecord: "s", ListRecords: "" };
        return this.client.call(MANAGER_PATH, MANAGER_IFACE, method, args, { type: types[method] });
    }
}

/** Builds an element: h("td", { class: "x", onclick: f }, "text", child). */
export function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
        if (v === undefined || v === null || v === false) continue;
        if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
        else if (k === "dataset") Object.assign(el.dataset, v);
        else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
        if (c === undefined || c === null || c === false) continue;
        el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
}

/** The short name of a D-Bus error ("AccessDenied"), or the problem code. */
export function errorName(err) {
    if (!err) return "";
    if (err.name && err.name.startsWith(ERROR_PREFIX)) return err.name.slice(ERROR_PREFIX.length);
    if (err.name) return err.name.split(".").pop();
    return err.problem || "";
}

/** Whether the daemon (polkit) or the bus refused the caller. */
export function isDenied(err) {
    const name = err && (err.name || "");
    return name === ERROR_PREFIX + "AccessDenied" ||
        name === "org.freedesktop.DBus.Error.AccessDenied" ||
        (err && err.problem === "access-denied");
}

/** `text` as a sentence: a capital first letter and a final stop. */
export function sentence(text) {
    const t = String(text).trim();
    if (!t) return t;
    const s = t[0].toUpperCase() + t.slice(1);
    return /[.!?)]$/.test(s) ? s : s + ".";
}

/** A sentence for the operator, without the error's type name (the
 *  daemon's messages say what is wrong and what to do); denials always
 *  start "Not permitted". */
export function describeError(err) {
    const message = (err && (err.message || String(err))) || "";
    if (isDenied(err)) return "Not permitted: " + (message || "polkit refused the request.");
    if (err && err.problem === "not-found")
        return "snpguardd is not reachable on the system bus: " + (message || "is it installed and running?");
    if (message) return sentence(message);
    const name = errorName(err);
    return name ? "The request failed (" + name + ")." : "The request failed.";
}

/** Most notices shown at once; the oldest goes first. */
const MAX_ALERTS = 3;

/** Shows a notice. Successes go after 10 s; errors stay until dismissed
 *  or the operator moves to another tab (clearAlerts), unless `sticky`
 *  (the bus connection is gone). The same notice again is counted on the
 *  one shown, not stacked. */
export function showAlert(kind, title, text, sticky = false) {
    const box = document.getElementById("alerts");
    const key = kind + "\n" + title + "\n" + (text || "");
    const same = [...box.children].find(a => a.sgKey === key);
    if (same) {
        const n = Number(same.dataset.repeat || "1") + 1;
        same.dataset.repeat = String(n);
        same.querySelector(".sg-repeat").textContent = " (" + n + "×)";
        return same;
    }
    const close = h("button", { class: "sg-close", type: "button", "aria-label": "Close" }, "×");
    const alert = h("div", {
        class: "sg-alert" + (kind === "error" ? "" : " sg-alert-" + kind),
        role: kind === "error" ? "alert" : "status",
        dataset: sticky ? { kind, sticky: "1" } : { kind },
    }, h("div", {}, h("strong", {}, title), text ? " " + text : "", h("span", { class: "sg-repeat" })), close);
    alert.sgKey = key;
    close.addEventListener("click", () => alert.remove());
    box.append(alert);
    for (let n = box.children.length; n > MAX_ALERTS; n--) {
        const oldest = [...box.children].find(a => !a.dataset.sticky && a !== alert);
        if (!oldest) break;
        oldest.remove();
    }
    if (kind !== "error") window.setTimeout(() => alert.remove(), 10000);
    return alert;
}

/** Removes every notice but the sticky ones (on a change of tab). */
export function clearAlerts() {
    for (const a of [...document.getElementById("alerts").children])
        if (!a.dataset.sticky) a.remove();
}

export function showError(title, err) {
    return showAlert("error", title, describeError(err));
}

/** Guest policy bits (SEV-SNP ABI, GUEST_POLICY). */
export const POLICY = {
    SMT: 1n << 16n,
    MIGRATE_MA: 1n << 18n,
    DEBUG: 1n << 19n,
    SINGLE_SOCKET: 1n << 20n,
};

/** Labels for the switches a policy turns on. */
export function policySwitches(policy) {
    const p = BigInt(policy);
    const out = [];
    if (p & POLICY.SMT) out.push(["SMT", "info"]);
    if (p & POLICY.MIGRATE_MA) out.push(["Migration agent", "off"]);
    if (p & POLICY.DEBUG) out.push(["Debug", "err"]);
    if (p & POLICY.SINGLE_SOCKET) out.push(["Single socket", "info"]);
    return out;
}

export function policyHex(policy) {
    return "0x" + BigInt(policy).toString(16).padStart(5, "0");
}

const TCB_KEYS = [["bootloader", "BL"], ["tee", "TEE"], ["snp", "SNP"], ["microcode", "µcode"], ["fmc", "FMC"]];

/** "BL 3 · TEE 0 · SNP 20 · µcode 209", or "" when the map is empty. */
export function tcbText(minTcb) {
    return TCB_KEYS.filter(([k]) => minTcb && k in minTcb)
            .map(([k, short]) => short + " " + minTcb[k])
            .join(" · ");
}

export function shortHex(hex) {
    return hex && hex.length > 20 ? hex.slice(0, 12) + "…" + hex.slice(-6) : hex || "";
}

/** RFC 3339 -> local, readable; "" stays "". */
export function formatTime(rfc3339) {
    if (!rfc3339) return "";
    const d = new Date(rfc3339);
    if (Number.isNaN(d.getTime())) return rfc3339;
    return d.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
}

/** A value with a copy button; the full value is in the title. */
export function copyable(full, shown) {
    const btn = h("button", { class: "sg-copy", type: "button", title: "Copy " + full, "aria-label": "Copy" }, "Copy");
    btn.addEventListener("click", ev => {
        ev.preventDefault();
        ev.stopPropagation();
        copyText(full).then(() => { btn.textContent = "Copied" },
                            () => { btn.textContent = "Copy failed" });
    });
    return h("span", { class: "sg-nowrap" }, h("code", { title: full }, shown ?? full), btn);
}

function copyText(text) {
    if (navigator.clipboard && window.isSecureContext)
        return navigator.clipboard.writeText(text);
    // Plain http to a remote Cockpit: the legacy path still works.
    const ta = h("textarea", { readonly: true });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    const ok = document.execCommand("copy");
    ta.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
}

/** Asks before something irreversible; resolves true on confirmation. */
export function confirmAction(title, body, okLabel) {
    const dialog = document.getElementById("confirm-dialog");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-body").textContent = body;
    document.getElementById("confirm-ok").textContent = okLabel;
    return new Promise(resolve => {
        dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
        dialog.returnValue = "cancel";
        dialog.showModal();
    });
}
