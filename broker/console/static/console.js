// The console's only script: start GOV.UK Frontend's components and refresh the board.
import { initAll } from '/assets/vendor/govuk-frontend/govuk-frontend.min.js'

document.body.classList.add('js-enabled', 'govuk-frontend-supported')
initAll()

for (const el of document.querySelectorAll('[data-refresh]')) {
  const every = Number(el.dataset.every || 5) * 1000
  const refresh = async () => {
    try {
      const answer = await fetch(el.dataset.refresh, { credentials: 'same-origin' })
      if (answer.ok && !answer.redirected) {
        el.innerHTML = await answer.text()
        el.dataset.refreshed = String(Number(el.dataset.refreshed || 0) + 1)
      }
    } catch (e) {
      // The next tick tries again; the page keeps what it showed.
    }
  }
  setInterval(refresh, every)
}
