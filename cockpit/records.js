// The records table and the record detail page, live from the daemon's
// ObjectManager (InterfacesAdded/Removed) and PropertiesChanged.

import {
    h, copyable, confirmAction, describeError, formatTime, policyHex, policySwitches,
    shortHex, showAlert, showError, tcbText, MANAGER_PATH, RECORD_IFACE,
} from "./util.js";

/** Text from a guest, safe to show: control and bidirectional formatting
 *  characters (and backslash) escaped as snpguardctl does. */
function escapeText(s) {
    return String(s).replace(/[\\\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, c => {
        const n = c.codePointAt(0);
        if (c === "\\") return "\\\\";
        if (c === "\t") return "\\t";
        if (c === "\n") return "\\n";
        if (c === "\r") return "\\r";
        return n < 0x100 ? "\\x" + n.toString(16).padStart(2, "0") : "\\u{" + n.toString(16) + "}";
    });
}

/** The words removed from `old` ("- w") and added in `now` ("+ w"), from
 *  a longest common subsequence of the space-separated words. */
function cmdlineDiff(old, now) {
    return itemDiff(old.split(" ").filter(w => w), now.split(" ").filter(w => w), "  ");
}

/** The items removed from `a` and added in `b`, each escaped after
 *  `indent` and "- " or "+ ". */
function itemDiff(a, b, indent) {
    const lcs = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
    for (let i = a.length - 1; i >= 0; i--)
        for (let j = b.length - 1; j >= 0; j--)
            lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    const out = [];
    let i = 0, j = 0;
    while (i < a.length || j < b.length) {
        if (i < a.length && j < b.length && a[i] === b[j]) { i++; j++ }
        else if (i < a.length && (j === b.length || lcs[i + 1][j] >= lcs[i][j + 1])) out.push(indent + "- " + escapeText(a[i++]));
        else out.push(indent + "+ " + escapeText(b[j++]));
    }
    return out;
}

const AGENT_CONFIG = "etc/snpguard/agent.toml";

/** The review of the agent's files in the initrd (LaunchAgentFiles of the
 *  launch being approved, `now`, against the approved launch's, `old`),
 *  line for line what `snpguardctl records approve` prints. Each side is
 *  {files, problems} or {error}. */
function agentReview(now, old, against) {
    if (now.error)
        return ["WARNING: the agent files in the initrd cannot be shown: " + escapeText(now.error.replace(/\.$/, "")) +
                "; compare the initrds yourself before approving"];
    const base = old && !old.error && old.problems.length === 0 ? old.files : null;
    const find = (list, p) => list.find(f => f[0] === p);
    const out = [base ? "Agent files in the initrd, against " + against + ":" : "Agent files in the initrd:"];
    if (now.files.length === 0) out.push("  none");
    for (const [path, kind, sha, text] of now.files) {
        const p = escapeText(path) + (kind === "symlink" ? " (symlink to " + escapeText(text) + ")" : "");
        const o = base && find(base, path);
        if (!base) out.push("  " + p + ": sha256 " + escapeText(sha));
        else if (!o) out.push("  " + p + ": added, sha256 " + escapeText(sha));
        else if (o[1] === kind && o[2] === sha) out.push("  " + p + ": unchanged");
        else {
            out.push("  " + p + ": changed, sha256 " + escapeText(sha));
            const a = o[3].split("\n"), b = text.split("\n");
            if (a[a.length - 1] === "") a.pop();
            if (b[b.length - 1] === "") b.pop();
            if (kind === "file" && o[1] === "file" && (o[3] || text) && a.length <= 2048 && b.length <= 2048)
                out.push(...itemDiff(a, b, "    "));
        }
    }
    if (base)
        for (const o of base)
            if (!find(now.files, o[0])) out.push("  " + escapeText(o[0]) + ": removed");
    const config = find(now.files, AGENT_CONFIG);
    if (!config) {
        out.push("WARNING: the initrd has no /" + AGENT_CONFIG + ": the SnpGuard agent is not configured " +
                 "in it, so a VM booting this launch will not unlock its disk");
    } else {
        const changed = p => {
            if (!base) return false;
            const n = find(now.files, p), o = find(base, p);
            return (n ? n[1] + n[2] : "") !== (o ? o[1] + o[2] : "");
        };
        // The CA the configuration names (snpguard_protocol::initrd::configured_ca).
        const m = /^\s*ca\s*=\s*"([^"]*)"/m.exec(config[3]);
        const ca = m && m[1].split("/").filter(c => c && c !== ".").join("/");
        if (ca && changed(ca))
            out.push("WARNING: the CA the agent trusts (/" + escapeText(ca) + ") changed: the agent " +
                     "will take its key from any server that CA certifies");
        if (changed(AGENT_CONFIG))
            out.push("WARNING: the agent configuration changed: check the servers and settings above");
    }
    for (const p of now.problems)
        out.push("WARNING: " + escapeText(p) + "; compare the initrds yourself before approving");
    return out;
}

function stateLabel(enabled) {
    return enabled
        ? h("span", { class: "sg-label sg-label-ok" }, "Enabled")
        : h("span", { class: "sg-label sg-label-off" }, "Disabled");
}

function policyLabels(policy) {
    const on = policySwitches(policy);
    if (on.length === 0) return h("span", { class: "sg-muted" }, "strict");
    return on.map(([text, kind]) => h("span", { class: "sg-label sg-label-" + kind }, text));
}

function attestations(p) {
    return h("span", { class: "sg-nowrap" },
             h("span", { class: "sg-label sg-label-ok", title: "accepted" }, String(p.AttestationsOk ?? 0)),
             h("span", { class: "sg-label" + (p.AttestationsFailed ? " sg-label-err" : ""), title: "refused" },
               String(p.AttestationsFailed ?? 0)));
}

function pending(p) {
    return p.PendingLaunches > 0
        ? h("span", { class: "sg-label sg-label-off" }, String(p.PendingLaunches))
        : "0";
}

export class Records {
    constructor(client, manager) {
        this.client = client;
        this.manager = manager;
        this.proxies = client.proxies(RECORD_IFACE, MANAGER_PATH);
        this.listeners = [];
        this.detailId = null;
        const changed = () => this.changed();
        this.proxies.addEventListener("added", changed);
        this.proxies.addEventListener("changed", changed);
        this.proxies.addEventListener("removed", changed);
        this.ready = this.proxies.wait();
    }

    /** Called with no arguments whenever any record changes. */
    onChange(f) {
        this.listeners.push(f);
    }

    changed() {
        this.renderTable();
        if (this.detailId !== null) this.renderDetail(this.detailId);
        for (const f of this.listeners) f();
    }

    list() {
        return Object.values(this.proxies)
                .filter(p => p && p.valid && p.Id !== undefined)
                .sort((a, b) => a.Name.localeCompare(b.Name));
    }

    byId(id) {
        return this.list().find(p => p.Id === id) || null;
    }

    /** Record name for an id ("" -> ""; unknown ids as they are). */
    nameOf(id) {
        const p = id ? this.byId(id) : null;
        return p ? p.Name : id;
    }

    renderTable() {
        const body = document.getElementById("records-body");
        const records = this.list();
        body.replaceChildren(...records.map(p => h("tr", { dataset: { record: p.Name } },
            h("td", {}, h("a", { href: "#/record/" + p.Id, class: "sg-record-link" }, p.Name)),
            h("td", {}, stateLabel(p.Enabled)),
            h("td", { class: "sg-nowrap" }, p.Vcpus + " × " + p.VcpuType),
            h("td", {}, policyLabels(p.Policy)),
            h("td", { class: "sg-nowrap" }, tcbText(p.MinTcb) || h("span", { class: "sg-muted" }, "none")),
            h("td", {}, copyable(p.Measurement, shortHex(p.Measurement))),
            h("td", { class: "sg-num" }, attestations(p)),
            h("td", { class: "sg-nowrap" }, formatTime(p.LastAttestation) || h("span", { class: "sg-muted" }, "never")),
            h("td", { class: "sg-num" }, pending(p)))));
        document.getElementById("records-empty").hidden = records.length > 0;
        document.getElementById("records-count").textContent =
            records.length === 1 ? "1 record" : records.length + " records";
    }

    show(id) {
        this.detailId = id;
        this.renderDetail(id);
    }

    hide() {
        this.detailId = null;
    }

    renderDetail(id) {
        const view = document.getElementById("view-detail");
        const p = this.byId(id);
        const back = h("div", { class: "sg-breadcrumb" }, h("a", { href: "#/" }, "Records"), " › ", p ? p.Name : id);
        if (!p) {
            view.replaceChildren(back, h("div", { class: "sg-card" },
                h("p", { class: "sg-empty" }, "No record " + id + " (deleted, or not loaded yet).")));
            return;
        }
        const row = (label, value) => [h("dt", {}, label), h("dd", {}, value)];
        const hex = v => v ? copyable(v) : h("span", { class: "sg-muted" }, "—");
        const minTcb = tcbText(p.MinTcb);
        const fields = h("dl", { class: "sg-dl", id: "record-fields" },
            row("Name", p.Name),
            row("Id", hex(p.Id)),
            row("State", stateLabel(p.Enabled)),
            row("Created", formatTime(p.Created) + " (" + p.Created + ")"),
            row("vCPUs", String(p.Vcpus)),
            row("vCPU type", p.VcpuType),
            row("Guest policy", [h("code", {}, policyHex(p.Policy)), " ", policyLabels(p.Policy)]),
            row("TCB minimums", minTcb || h("span", { class: "sg-muted" }, "none (only the daemon-wide floor applies)")),
            row("Test root", p.AllowTestRoot
                ? h("strong", {}, "accepted (simulated platforms; never for production)")
                : "refused"),
            row("Offline unlock", p.OfflineUnlock
                ? h("strong", {}, "allowed (guests enrol a chip-derived key and may unlock without this server)")
                : "not allowed"),
            row("Measurement", hex(p.Measurement)),
            row("Kernel command line", p.Cmdline ? h("code", {}, p.Cmdline) : h("span", { class: "sg-muted" }, "(empty)")),
            row("Image ID", hex(p.ImageId)),
            row("Family ID", hex(p.FamilyId)),
            row("ID key digest", hex(p.IdKeyDigest)),
            row("Author key digest", hex(p.AuthorKeyDigest)),
            row("Attestations", [attestations(p), " accepted / refused"]),
            row("Last attestation", p.LastAttestation ? formatTime(p.LastAttestation) + " (" + p.LastAttestation + ")" : "never"),
            row("Pending launches", pending(p)));

        const toggle = h("button", { class: "sg-btn", type: "button", id: "record-toggle" },
                         p.Enabled ? "Disable" : "Enable");
        toggle.addEventListener("click", () => this.act(p, p.Enabled ? "Disable" : "Enable", toggle));
        const offline = h("button", { class: "sg-btn", type: "button", id: "record-offline-toggle" },
                          p.OfflineUnlock ? "Forbid offline unlock" : "Allow offline unlock");
        offline.addEventListener("click", () => this.setOfflineUnlock(p, !p.OfflineUnlock, offline));
        const download = h("button", { class: "sg-btn", type: "button", id: "record-download" }, "Download launch bundle");
        download.addEventListener("click", () => this.download(p, download));
        const del = h("button", { class: "sg-btn sg-btn-danger", type: "button", id: "record-delete" }, "Delete");
        del.addEventListener("click", () => this.remove(p, del));

        view.replaceChildren(back,
            h("div", { class: "sg-card" },
              h("div", { class: "sg-card-header" }, h("h2", {}, p.Name), stateLabel(p.Enabled)),
              h("div", { class: "sg-card-body" }, fields,
                h("div", { class: "sg-actions" }, toggle, offline, download, del))),
            this.launches(p));
    }

    /** The record's launches (kernel, initrd, cmdline each), newest first,
     *  with what can be done to each in its state. */
    launches(p) {
        const launches = (p.Launches || []).map(([id, state, measurement, cmdline, created, origin]) =>
            ({ id, state, measurement, cmdline, created, origin })).reverse();
        const kinds = { approved: "ok", pending: "off", retired: "" };
        const button = (label, danger, f) => {
            const b = h("button", { class: "sg-btn" + (danger ? " sg-btn-danger" : ""), type: "button", dataset: { action: label.toLowerCase() } }, label);
            b.addEventListener("click", () => f(b));
            return b;
        };
        const rows = launches.map(l => h("tr", { dataset: { launch: l.id, state: l.state } },
            h("td", {}, l.id),
            h("td", {}, h("span", { class: "sg-label sg-label-" + (kinds[l.state] ?? "") }, l.state)),
            h("td", {}, copyable(l.measurement, shortHex(l.measurement))),
            h("td", { class: "sg-detail-cell" }, h("code", {}, l.cmdline)),
            h("td", { class: "sg-nowrap", title: l.created }, formatTime(l.created)),
            h("td", {}, l.origin),
            h("td", { class: "sg-nowrap" },
              l.state !== "approved" && button("Approve", false, b => this.approve(p, launches, l, b)),
              l.state === "approved" && button("Retire", false, b => this.launchAct(p, "RetireLaunch", l, b)),
              l.state !== "approved" && button("Discard", true, b =>
                  confirmAction("Discard launch " + l.id + " of " + p.Name + "?",
                                "Its kernel, initrd and command line are deleted; a guest booting them gets no key.",
                                "Discard")
                          .then(ok => ok && this.launchAct(p, "DiscardLaunch", l, b))))));
        return h("div", { class: "sg-card", id: "record-launches" },
                 h("div", { class: "sg-card-header" }, h("h2", {}, "Launches"),
                   h("span", { class: "sg-muted" }, "A new kernel is a pending launch: it gets no key until approved.")),
                 h("div", { class: "sg-table-wrap" },
                   h("table", { class: "sg-table" },
                     h("thead", {}, h("tr", {}, ["Launch", "State", "Measurement", "Kernel command line", "Created", "Origin", ""]
                             .map(t => h("th", {}, t)))),
                     h("tbody", {}, rows))));
    }

    /** Shows what approving `launch` signs, as `snpguardctl records
     *  approve` does (origin, measurements, kernel and initrd SHA-256, the
     *  command-line diff against the approved launch, what changed in the
     *  agent's files inside the initrd), and approves it once confirmed. */
    approve(p, launches, launch, button) {
        button.disabled = true;
        const current = launches.find(c => c.measurement === p.Measurement && c.id !== launch.id);
        const digests = l => p.call("LaunchDigests", [l.id]);
        const agent = l => p.call("LaunchAgentFiles", [l.id])
                .then(([files, problems]) => ({ files, problems }), err => ({ error: describeError(err) }));
        return Promise.all([digests(launch), current ? digests(current) : Promise.resolve(null),
            agent(launch), current ? agent(current) : Promise.resolve(null)])
                .then(([[kernel, initrd], old, agentNow, agentOld]) => {
                    button.disabled = false;
                    const mark = (v, o) => (o === undefined ? "" : v === o ? " (unchanged)" : " (changed)");
                    const diff = cmdlineDiff(current ? current.cmdline : (p.Cmdline || ""), launch.cmdline);
                    const body = [
                        "Origin: " + escapeText(launch.origin),
                        "Measurement: " + escapeText(launch.measurement),
                        "Replaces: " + (current ? escapeText(p.Measurement) + " (launch " + escapeText(current.id) + ")" : "nothing"),
                        "Kernel sha256: " + escapeText(kernel) + mark(kernel, old?.[0]),
                        "Initrd sha256: " + escapeText(initrd) + mark(initrd, old?.[1]),
                        "Command line: " + escapeText(launch.cmdline),
                        diff.length ? "Command-line diff:" : "Command-line diff: none",
                        ...diff,
                        ...agentReview(agentNow, agentOld, current ? "launch " + escapeText(current.id) : ""),
                    ].join("\n");
                    return confirmAction("Approve launch " + launch.id + " of " + p.Name + "?", body, "Approve");
                }, err => {
                    button.disabled = false;
                    showError("Could not read launch " + launch.id + " of " + p.Name + ".", err);
                    return false;
                })
                .then(ok => ok && this.launchAct(p, "ApproveLaunch", launch, button));
    }

    launchAct(p, method, launch, button) {
        button.disabled = true;
        const verb = method.replace("Launch", "").toLowerCase();
        const done = { approve: "approved", retire: "retired", discard: "discarded" }[verb];
        return p.call(method, [launch.id])
                .then(() => showAlert("success", "Launch " + launch.id + " of " + p.Name + " " + done, ""),
                      err => showError("Could not " + verb + " launch " + launch.id + " of " + p.Name + ".", err))
                .finally(() => { button.disabled = false });
    }

    /** Runs a record method; failures (denials too) are always shown. */
    act(p, method, button) {
        if (button) button.disabled = true;
        return p.call(method, [])
                .then(() => showAlert("success", method + "d", p.Name), // "Enabled", "Disabled", "Deleted"
                      err => showError("Could not " + method.toLowerCase() + " " + p.Name + ".", err))
                .finally(() => { if (button) button.disabled = false });
    }

    /** SetOfflineUnlock: allowing asks first and says what it means;
     *  both say what turning it off can and cannot reach. */
    setOfflineUnlock(p, allow, button) {
        const ask = allow
            ? confirmAction("Allow offline unlock for " + p.Name + "?",
                            "At its next online unlock a guest of " + p.Name + " enrols a key derived from its chip and " +
                            "launch, and from then on opens its root with it when no server answers. Such a boot is " +
                            "not seen by this server. Forbidding it later, or disabling the record, reaches a guest " +
                            "only when it unlocks online again.",
                            "Allow")
            : Promise.resolve(true);
        return ask.then(ok => {
            if (!ok) return;
            button.disabled = true;
            return p.call("SetOfflineUnlock", [allow])
                    .then(() => showAlert("success", allow ? "Offline unlock allowed" : "Offline unlock forbidden",
                                          allow ? p.Name
                                                : p.Name + ": a guest that enrolled removes its key at its next online " +
                                                  "unlock; one that never comes online again keeps it"),
                          err => showError("Could not " + (allow ? "allow" : "forbid") + " offline unlock of " + p.Name + ".", err))
                    .finally(() => { button.disabled = false });
        });
    }

    remove(p, button) {
        return confirmAction("Delete " + p.Name + "?",
                             "The record, its sealed volume key and its ID key are deleted. Guests launched from it can no longer unlock. This cannot be undone.",
                             "Delete")
                .then(ok => {
                    if (!ok) return;
                    button.disabled = true;
                    return p.call("Delete", [])
                            .then(() => {
                                showAlert("success", "Deleted", p.Name);
                                window.location.hash = "#/";
                            }, err => showError("Could not delete " + p.Name + ".", err))
                            .finally(() => { button.disabled = false });
                });
    }

    /** ExportBundleToPath into the import directory, then hands the
     *  file to the browser. */
    download(p, button) {
        const dir = (this.manager.ImportDirectory || "").replace(/\/+$/, "");
        const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "");
        const path = dir + "/" + p.Name + "-" + stamp + ".launch-artifacts.tar.gz";
        button.disabled = true;
        return p.call("ExportBundleToPath", [path])
                .then(() => cockpit.file(path, { binary: true, max_read_size: 1024 * 1024 * 1024 }).read()
                        .then(bytes => {
                            const url = URL.createObjectURL(new Blob([bytes], { type: "application/gzip" }));
                            const a = h("a", { href: url, download: p.Name + ".launch-artifacts.tar.gz" });
                            document.body.append(a);
                            a.click();
                            a.remove();
                            window.setTimeout(() => URL.revokeObjectURL(url), 60000);
                            showAlert("success", "Launch bundle exported", "to " + path);
                        }, err => showAlert("info", "Launch bundle written to " + path,
                                            " (the browser could not read it: " + describeError(err) + ")")),
                      err => showError("Could not export the launch bundle of " + p.Name + ".", err))
                .finally(() => { button.disabled = false });
    }
}
