// Validate custom resources (JSON list on stdin) with the @kubernetes-models npm packages
// (prometheus-operator, keda), whose folder is argv[2]; print each kind. Run by
// tests/integration/test_deploy_kubernetes.py. The models check types, required fields and
// formats, not unknown fields: the test asserts the fields it relies on itself.
const path = process.argv[2];
const models = {
  "monitoring.coreos.com/v1": require(path + "/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1"),
  "keda.sh/v1alpha1": require(path + "/@kubernetes-models/keda/keda.sh/v1alpha1"),
};
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  for (const doc of JSON.parse(input)) {
    const group = models[doc.apiVersion];
    if (!group || !group[doc.kind]) { console.error("no model for " + doc.apiVersion + " " + doc.kind); process.exit(2); }
    try { new group[doc.kind](doc).validate(); }
    catch (e) { console.error(doc.kind + ": " + e.message); process.exit(1); }
    console.log(doc.kind);
  }
});
