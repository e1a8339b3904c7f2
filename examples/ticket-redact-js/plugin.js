// The component's entry (world `redactor`: lifecycle, span hooks, log hooks).
import { exportPlugin } from "../../sdk/js/component.js";
import { TicketRedact } from "./rules.js";

export const { lifecycle, spanHooks, logHooks } = exportPlugin(TicketRedact);
