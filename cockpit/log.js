// The attestation log: the daemon's audit trail (Manager.AuditTrail),
// filterable. Reloaded when shown, on request, and whenever a record's
// attestation counters change (PropertiesChanged), never by polling.

import { h, formatTime, showError } from "./util.js";

const COUNT = 500;

export class AttestationLog {
    constructor(manager, records) {
        this.manager = manager;
        this.records = records;
        this.entries = [];
        this.visible = false;
        this.seen = "";
        this.filter = document.getElementById("log-filter");
        this.result = document.getElementById("log-result");
        this.filter.addEventListener("input", () => this.render());
        this.result.addEventListener("change", () => this.render());
        document.getElementById("log-refresh").addEventListener("click", () => this.load());
        records.onChange(() => {
            const counters = records.list().map(p => p.Id + p.AttestationsOk + "/" + p.AttestationsFailed).join();
            if (this.visible && counters !== this.seen) this.load();
            this.seen = counters;
        });
    }

    show() {
        this.visible = true;
        return this.load();
    }

    hide() {
        this.visible = false;
    }

    load() {
        return this.manager.call("AuditTrail", [COUNT])
                .then(([entries]) => {
                    // Newest first.
                    this.entries = entries.map(([time, record, peer, result, codes, detail]) =>
                        ({ time, record, peer, result, codes, detail })).reverse();
                    this.render();
                }, err => showError("Could not read the attestation log.", err));
    }

    render() {
        const needle = this.filter.value.trim().toLowerCase();
        const want = this.result.value;
        const rows = this.entries.filter(e => {
            if (want === "ok" && e.result !== "ok") return false;
            if (want === "refused" && e.result === "ok") return false;
            if (!needle) return true;
            const hay = [e.time, e.record, this.records.nameOf(e.record), e.peer, e.result, e.codes.join(" "), e.detail]
                    .join(" ").toLowerCase();
            return hay.includes(needle);
        });
        document.getElementById("log-body").replaceChildren(...rows.map(e => h("tr", {},
            h("td", { class: "sg-nowrap", title: e.time }, formatTime(e.time)),
            h("td", {}, e.record ? h("a", { href: "#/record/" + e.record }, this.records.nameOf(e.record))
                                 : h("span", { class: "sg-muted" }, "none matched")),
            h("td", {}, h("code", {}, e.peer)),
            h("td", {}, e.result === "ok"
                ? h("span", { class: "sg-label sg-label-ok" }, "accepted")
                : h("span", { class: "sg-label sg-label-err" }, "refused")),
            h("td", {}, e.codes.map(c => h("span", { class: "sg-label" }, c))),
            h("td", { class: "sg-detail-cell" }, e.detail))));
        document.getElementById("log-empty").hidden = rows.length > 0;
    }
}
