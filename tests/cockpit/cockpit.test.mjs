// SnpGuard's Cockpit page in headless Chromium, through real cockpit-ws
// and cockpit-bridge, against the real snpguardd on a private system bus
// with a mock polkit. Screenshots go to build/cockpit-test/ (or
// $COCKPIT_TEST_OUT) for review.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { World } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const UI_TIMEOUT = 30_000;

let world;
let context;
let page;
const pageErrors = [];
const foreignRequests = [];

async function record(name) {
    return JSON.parse(await world.ctl("records", "show", name, "--json"));
}

async function shot(name) {
    await page.screenshot({ path: path.join(world.out, name + ".png"), fullPage: true });
}

before(async () => {
    world = new World();
    await world.start();
    const profile = fs.mkdtempSync(path.join(world.dir, "chromium-"));
    context = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        viewport: { width: 1400, height: 800 },
        args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(UI_TIMEOUT);
    page.on("pageerror", e => pageErrors.push(String(e)));
    page.on("request", r => {
        if (!r.url().startsWith(world.origin + "/") && !r.url().startsWith("blob:") && !r.url().startsWith("data:"))
            foreignRequests.push(r.url());
    });
    await page.goto(world.pageUrl);
    await page.waitForSelector("body[data-ready=true]");
    // Set once; a reload would lose it.
    await page.evaluate(() => { window.sgNoReload = true });
});

after(async () => {
    if (context) await context.close();
    if (world) await world.stop();
});

test("a record registered by snpguardctl appears without reload", async () => {
    assert.equal(await page.locator("#records-body tr").count(), 0);
    assert.ok(await page.locator("#records-empty").isVisible());
    const staging = await world.stage("web");
    await world.ctl("register", "--name", "web", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--allow-smt",
                    "--min-tcb-bootloader", "3", "--min-tcb-tee", "0", "--min-tcb-snp", "20", "--min-tcb-microcode", "209",
                    "--staging-dir", staging, "--out-bundle", path.join(world.dir, "web.tar.gz"));
    const row = page.locator('#records-body tr[data-record="web"]');
    await row.waitFor();
    const text = await row.innerText();
    const want = await record("web");
    assert.match(text, /Enabled/);
    assert.match(text, /2 × EPYC-v4/);
    assert.match(text, /SMT/);
    assert.match(text, /BL 3 · TEE 0 · SNP 20 · µcode 209/);
    const measurement = want.measurement;
    assert.match(text, new RegExp(measurement.slice(0, 12) + "…" + measurement.slice(-6)));
    assert.equal(await page.locator(`#records-body tr[data-record="web"] code`).getAttribute("title"), measurement);
    assert.equal(await page.evaluate(() => window.sgNoReload), true, "the page was not reloaded");
    assert.equal(await page.locator("#records-count").innerText(), "1 record");
    await shot("records");
});

test("disable in the page and snpguardctl agrees", async () => {
    await page.click('#records-body tr[data-record="web"] a.sg-record-link');
    await page.waitForSelector("#record-fields");
    await shot("record-detail-enabled");
    assert.equal(await page.locator("#record-toggle").innerText(), "Disable");
    await page.click("#record-toggle");
    await page.locator("#record-toggle", { hasText: "Enable" }).waitFor();
    assert.equal((await record("web")).enabled, false);
    const fields = await page.locator("#record-fields").innerText();
    for (const label of ["Measurement", "Image ID", "Family ID", "ID key digest", "Author key digest",
                         "Kernel command line", "Guest policy", "TCB minimums", "Test root", "Created"])
        assert.ok(fields.includes(label), label + " shown");
    assert.match(fields, /console=ttyS0 root=\/dev\/mapper\/root/);
    assert.match(fields, /Disabled/);
    // The list follows PropertiesChanged too.
    await page.click("#tab-records");
    await page.locator('#records-body tr[data-record="web"]', { hasText: "Disabled" }).waitFor();
    await page.click('#records-body tr[data-record="web"] a.sg-record-link');
    await page.waitForSelector("#record-fields");
    await shot("record-detail");
    assert.equal(await page.evaluate(() => window.sgNoReload), true);
});

test("offline unlock is allowed after a confirmation, forbidden, and followed live", async () => {
    // On the record page the previous test left open.
    await page.waitForSelector("#record-fields");
    assert.match(await page.locator("#record-fields").innerText(), /Offline unlock\s+not allowed/);
    assert.equal((await record("web")).offline_unlock, false);
    const button = page.locator("#record-offline-toggle");
    assert.equal(await button.innerText(), "Allow offline unlock");
    // Allowing asks first and states the limit; cancel changes nothing.
    await button.click();
    await page.locator("#confirm-dialog[open]").waitFor();
    const body = await page.locator("#confirm-body").textContent();
    assert.match(body, /enrols a key derived from its chip/);
    assert.match(body, /not seen by this server/);
    assert.match(body, /reaches a guest only when it unlocks online again/);
    await page.click("#confirm-cancel");
    assert.equal((await record("web")).offline_unlock, false);
    await button.click();
    await page.locator("#confirm-dialog[open]").waitFor();
    await page.click("#confirm-ok");
    await page.locator("#record-offline-toggle", { hasText: "Forbid offline unlock" }).waitFor();
    assert.equal((await record("web")).offline_unlock, true);
    assert.match(await page.locator("#record-fields").innerText(), /Offline unlock\s+allowed/);
    await shot("record-offline-unlock");
    // Forbidding needs no confirmation; the notice says what it cannot reach.
    await page.click("#record-offline-toggle");
    await page.locator("#record-offline-toggle", { hasText: "Allow offline unlock" }).waitFor();
    assert.equal((await record("web")).offline_unlock, false);
    await page.locator(".sg-alert", { hasText: "never comes online again keeps it" }).waitFor();
    await closeAlerts();
    // Changed by snpguardctl: the open page follows PropertiesChanged.
    await world.ctl("records", "set-offline-unlock", "web", "on");
    await page.locator("#record-offline-toggle", { hasText: "Forbid offline unlock" }).waitFor();
    await world.ctl("records", "set-offline-unlock", "web", "off");
    await page.locator("#record-offline-toggle", { hasText: "Allow offline unlock" }).waitFor();
    assert.equal(await page.evaluate(() => window.sgNoReload), true);
});

test("a pending launch appears live and is approved in the page", async () => {
    const staging = await world.stage("web-kernel-2");
    await world.ctl("records", "add-launch", "web", "--staging", staging);
    const before = await record("web");
    assert.equal(before.pending_launches, 1);
    const pendingId = before.launches.find(l => l.state === "pending").id;
    // On the open record page and in the table, without a reload.
    const row = page.locator(`#record-launches tr[data-launch="${pendingId}"][data-state="pending"]`);
    await row.waitFor();
    await shot("record-pending-launch");
    // Approve shows what it signs first; cancel changes nothing.
    await row.locator('button[data-action="approve"]').click();
    await page.locator("#confirm-dialog[open]").waitFor();
    const review = await page.locator("#confirm-body").textContent();
    assert.match(review, /^Origin: operator$/m);
    assert.match(review, /^Kernel sha256: [0-9a-f]{64} \((un)?changed\)$/m);
    assert.match(review, new RegExp(`^Measurement: ${before.launches.find(l => l.id === pendingId).measurement}$`, "m"));
    // The agent's files in the initrd: the same configuration, a new CA.
    assert.match(review, /^Agent files in the initrd, against launch \d+:$/m);
    assert.match(review, /^  etc\/snpguard\/agent\.toml: unchanged$/m);
    assert.match(review, /^  etc\/snpguard\/ca\.pem: changed, sha256 [0-9a-f]{64}$/m);
    assert.match(review, /^    - SIMULATED CA [0-9a-f]{32}$/m);
    assert.match(review, /^WARNING: the CA the agent trusts \(\/etc\/snpguard\/ca\.pem\) changed/m);
    assert.doesNotMatch(review, /agent configuration changed/);
    await page.click("#confirm-cancel");
    assert.equal((await record("web")).pending_launches, 1);
    await row.locator('button[data-action="approve"]').click();
    await page.locator("#confirm-dialog[open]").waitFor();
    await page.click("#confirm-ok");
    await page.locator(`#record-launches tr[data-launch="${pendingId}"][data-state="approved"]`).waitFor();
    const after = await record("web");
    assert.equal(after.pending_launches, 0);
    assert.equal(after.launches.find(l => l.id === pendingId).state, "approved");
    assert.equal(after.measurement, after.launches.find(l => l.id === pendingId).measurement);
    await page.click("#tab-records");
    await page.locator('#records-body tr[data-record="web"] td:last-child', { hasText: "0" }).waitFor();
    assert.equal(await page.evaluate(() => window.sgNoReload), true);
});

test("register through the form; daemon errors land next to their field", async () => {
    const staging = await world.stage("db");
    await page.click("#tab-register");
    await page.waitForSelector("#register-form");
    const types = await page.locator("#f-vcpu-type option").allTextContents();
    assert.ok(types.includes("EPYC-Milan") && types.includes("EPYC-Turin"), "types from the daemon: " + types);
    assert.equal(await page.locator("#import-dir").innerText(), world.importDir);

    // A name the daemon refuses: its message next to the name field.
    await page.fill("#f-staging", staging);
    await page.fill("#f-name", "db main");
    await page.fill("#f-vcpus", "4");
    await page.selectOption("#f-vcpu-type", "EPYC-Milan");
    await page.click("#register-submit");
    await page.locator("#err-name", { hasText: "name" }).waitFor();
    // Errors read as sentences, without the D-Bus error's type name.
    assert.match(await page.locator("#err-name").innerText(), /^[A-Z].*\.$/);
    assert.doesNotMatch(await page.locator("#err-name").innerText(), /InvalidInput/);
    assert.equal(await page.locator("#err-form").innerText(), "");
    assert.ok(await page.locator('[data-field="name"].sg-invalid').count() === 1);
    // A name that exists: AlreadyExists, at the name too.
    await page.fill("#f-name", "web");
    await page.click("#register-submit");
    await page.locator("#err-name", { hasText: "already exists" }).waitFor();
    assert.doesNotMatch(await page.locator("#err-name").innerText(), /AlreadyExists/);
    // A staging directory without the files: at the staging field.
    await page.fill("#f-name", "db");
    await page.fill("#f-staging", world.dir);
    await page.click("#register-submit");
    await page.locator("#err-staging", { hasText: "cmdline" }).waitFor();
    // Outside the import directory: brought in under a fresh name, given
    // to the daemon (which refuses the name here), removed again.
    const outside = await world.stage("outside", world.dir);
    const copies = () => fs.readdirSync(world.importDir).filter(f => f.startsWith("cockpit-"));
    await page.fill("#f-staging", outside);
    await page.fill("#f-name", "db main");
    await page.click("#register-submit");
    await page.locator("#err-name", { hasText: "name" }).waitFor();
    await page.locator("#staging-progress-text", { hasText: "the copy is removed again" }).waitFor();
    assert.match(await page.locator("#staging-progress-text").innerText(),
                 /^Copied 3 files \(\d+\.\d MiB\) into .*\/cockpit-outside-\d{8}T\d{6}Z; the copy is removed again\.$/);
    assert.equal(await page.locator("#err-staging").innerText(), "");
    assert.deepEqual(copies(), []);
    await shot("register-errors");
    // A staging directory elsewhere that lacks a file: named, nothing copied.
    const partial = await world.stage("partial", world.dir);
    fs.rmSync(path.join(partial, "initrd"));
    await page.fill("#f-staging", partial);
    await page.fill("#f-name", "db");
    await page.click("#register-submit");
    await page.locator("#err-staging", { hasText: partial + "/initrd is not a file you can read." }).waitFor();
    assert.deepEqual(copies(), []);

    // Registered from outside the import directory.
    await page.fill("#f-staging", outside);
    await page.check("#f-allow-smt");
    await page.check("#f-allow-offline-unlock");
    await page.fill("#f-tcb-bootloader", "4");
    await page.fill("#f-tcb-tee", "0");
    await page.fill("#f-tcb-snp", "21");
    await page.fill("#f-tcb-microcode", "210");
    await page.click("#register-submit");
    await page.waitForURL(/#\/record\/[0-9a-f]{32}$/);
    await page.locator("#view-detail h2", { hasText: "db" }).waitFor();
    const db = await record("db");
    assert.equal(db.vcpus, 4);
    assert.equal(db.vcpu_type, "EPYC-Milan");
    assert.equal(db.offline_unlock, true);
    assert.match(await page.locator("#record-fields").innerText(), /Offline unlock\s+allowed/);
    assert.equal(db.cmdline, "console=ttyS0 root=/dev/mapper/root");
    assert.deepEqual(db.min_tcb && { bl: db.min_tcb.bootloader, snp: db.min_tcb.snp, mc: db.min_tcb.microcode },
                     { bl: 4, snp: 21, mc: 210 });
    assert.deepEqual(copies(), []);
    await page.click("#tab-records");
    assert.equal(await page.locator("#records-body tr").count(), 2);
});

/** Dismisses every alert (success alerts may vanish on their own meanwhile). */
async function closeAlerts() {
    const close = page.locator(".sg-alert .sg-close");
    while (await close.count() > 0) await close.first().click({ timeout: 2000 }).catch(() => {});
}

test("a polkit denial is shown as not permitted and changes nothing", async () => {
    await closeAlerts();
    world.polkit.allow = false;
    try {
        await denied();
    } finally {
        world.polkit.allow = true;
    }
});

async function denied() {
    const before = world.polkit.calls.length;
    await page.click("#tab-records");
    await page.click('#records-body tr[data-record="web"] a.sg-record-link');
    await page.waitForSelector("#record-fields");
    await page.click("#record-toggle");
    const alert = page.locator('.sg-alert[data-kind="error"]', { hasText: "Not permitted" });
    await alert.waitFor();
    assert.match(await alert.innerText(), /not authorized for org\.snpguard\.SnpGuard1\.manage/);
    await shot("not-permitted");
    assert.equal((await record("web")).enabled, false);
    assert.equal(await page.locator("#record-toggle").innerText(), "Enable");
    const asked = world.polkit.calls.slice(before);
    assert.equal(asked.length, 1);
    assert.equal(asked[0].action, "org.snpguard.SnpGuard1.manage");
    assert.equal(asked[0].kind, "system-bus-name");
    assert.match(asked[0].name, /^:\d+\.\d+$/);
    // The same refusal again is counted on the notice shown, not stacked;
    // moving to another tab clears it.
    await page.click("#record-toggle");
    await page.locator('.sg-alert[data-kind="error"][data-repeat="2"]', { hasText: "Not permitted" }).waitFor();
    assert.equal(await page.locator('.sg-alert[data-kind="error"]').count(), 1);
    // Offline unlock likewise: asked as manage, refused, unchanged.
    await page.click("#record-offline-toggle");
    await page.locator("#confirm-dialog[open]").waitFor();
    await page.click("#confirm-ok");
    const offline = page.locator('.sg-alert[data-kind="error"]', { hasText: "Could not allow offline unlock of web" });
    await offline.waitFor();
    assert.match(await offline.innerText(), /Not permitted.*org\.snpguard\.SnpGuard1\.manage/s);
    assert.equal((await record("web")).offline_unlock, false);
    assert.equal(await page.locator("#record-offline-toggle").innerText(), "Allow offline unlock");
    assert.equal(world.polkit.calls.at(-1).action, "org.snpguard.SnpGuard1.manage");
    await page.click("#tab-log");
    await page.locator('.sg-alert[data-kind="error"]').waitFor({ state: "detached" });
    await closeAlerts();

    // The form too: registration refused, shown, nothing registered.
    const staging = await world.stage("denied");
    await page.click("#tab-register");
    await page.fill("#f-staging", staging);
    await page.fill("#f-name", "denied");
    await page.click("#register-submit");
    await page.locator("#err-form", { hasText: "Not permitted" }).waitFor();
    await page.locator('.sg-alert[data-kind="error"]', { hasText: "Registration not permitted" }).waitFor();
    await assert.rejects(world.ctl("records", "show", "denied", "--json"));
    await closeAlerts();
}

test("download exports the bundle through the import directory", async () => {
    await page.click("#tab-records");
    await page.click('#records-body tr[data-record="web"] a.sg-record-link');
    await page.waitForSelector("#record-fields");
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#record-download")]);
    const saved = path.join(world.dir, "downloaded.tar.gz");
    await download.saveAs(saved);
    const bytes = fs.readFileSync(saved);
    assert.equal(bytes[0], 0x1f);
    assert.equal(bytes[1], 0x8b, "gzip");
    const exported = fs.readdirSync(world.importDir).filter(f => f.endsWith(".launch-artifacts.tar.gz"));
    assert.equal(exported.length, 1);
    assert.deepEqual(fs.readFileSync(path.join(world.importDir, exported[0])), bytes);
});

test("delete asks first, then the record disappears everywhere", async () => {
    await page.click("#record-delete");
    await page.locator("#confirm-dialog[open]").waitFor();
    await page.click("#confirm-cancel");
    assert.ok(await record("web"));
    await page.click("#record-delete");
    await page.click("#confirm-ok");
    await page.waitForURL(/#\/$/);
    await page.locator('#records-body tr[data-record="web"]').waitFor({ state: "detached" });
    await assert.rejects(world.ctl("records", "show", "web", "--json"));
    assert.equal(await page.locator("#records-body tr").count(), 1);
});

test("attestation log and dark mode render", async () => {
    await page.click("#tab-log");
    await page.locator("#log-empty").waitFor({ state: "visible" });
    assert.equal(await page.locator('.sg-alert[data-kind="error"]').count(), 0);
    await page.emulateMedia({ colorScheme: "dark" });
    await page.click("#tab-records");
    await shot("records-dark");
    await page.emulateMedia({ colorScheme: "light" });
});

test("no page errors and no request leaves the Cockpit origin", () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(foreignRequests, []);
});
