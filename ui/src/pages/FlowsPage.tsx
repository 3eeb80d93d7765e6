export default function FlowsPage() {
  return (
    <section className="page">
      <h1>Flows</h1>
    </section>
  );
}
