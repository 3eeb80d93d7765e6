export default function AlertsPage() {
  return (
    <section className="page">
      <h1>Alerts</h1>
    </section>
  );
}
