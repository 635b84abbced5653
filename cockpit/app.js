// SnpGuard's Cockpit page: a client of snpguardd's D-Bus API
// (org.snpguard.SnpGuard1, docs/dbus.md). Authorization is the daemon's:
// polkit decides, the page shows what it said.

import { BUS_NAME, Manager, clearAlerts, showAlert, showError } from "./util.js";
import { Records } from "./records.js";
import { Register } from "./register.js";
import { AttestationLog } from "./log.js";

const client = cockpit.dbus(BUS_NAME, { bus: "system", superuser: "try" });
const manager = new Manager(client);
const records = new Records(client, manager);
const register = new Register(client, manager, id => { window.location.hash = "#/record/" + id });
const log = new AttestationLog(manager, records);

client.addEventListener("close", (_ev, options) => {
    showAlert("error", "Lost the connection to the system bus.", options ? (options.message || options.problem || "") : "", true);
});

/** #/, #/record/<id>, #/register, #/log */
function route() {
    const parts = window.location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
    const view = parts[0] === "record" && parts[1] ? "detail"
        : parts[0] === "register" ? "register"
            : parts[0] === "log" ? "log" : "records";
    for (const v of ["records", "detail", "register", "log"])
        document.getElementById("view-" + v).hidden = v !== view;
    const tab = view === "detail" ? "records" : view;
    for (const a of document.querySelectorAll(".sg-tabs a"))
        a.classList.toggle("sg-active", a.dataset.view === tab);
    if (view === "detail") records.show(decodeURIComponent(parts[1]));
    else records.hide();
    if (view === "log") log.show();
    else log.hide();
    if (view === "register") register.refresh();
    document.body.dataset.view = view;
}

window.addEventListener("hashchange", route);
// Notices belong to the tab they were raised on.
for (const a of document.querySelectorAll(".sg-tabs a")) a.addEventListener("click", clearAlerts);

manager.load()
        .then(() => {
            document.getElementById("daemon-version").textContent = "snpguardd " + manager.Version;
            register.refresh();
        }, err => showAlert("error", "snpguardd is not available.",
                            "Nothing answers as " + BUS_NAME + " on the system bus (" + (err.message || err.problem) +
                            "); start snpguardd.service.", true));

records.ready
        .then(() => {
            records.changed();
            document.body.dataset.ready = "true";
        }, err => showError("Could not list the records.", err));

route();
