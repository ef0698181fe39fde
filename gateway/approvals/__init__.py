"""Human approval of held calls: stores (memory, Redis), the approve stage, the approvers' page/API, webhooks, CLI."""
